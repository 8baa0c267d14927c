"""Conformal age intervals and gender temperature scaling, on synthetic data with known answers."""

import json

import numpy as np
import pytest

from agestimate.errors import ModelFileError
from agestimate.evaluation.metrics import expected_calibration_error, interval_metrics, threshold_metrics
from agestimate.heads.calibration import AgeCalibration, Calibration, GenderCalibration, check_level, sigmoid


def test_interval_ends_are_the_conformal_order_statistics():
    # 999 faces predicted 30 +- 2 whose residuals are 2 * z, z = -4.99, -4.98, ..., 4.99
    z = np.arange(-499, 500) / 100
    calibration = AgeCalibration.fit(np.full(999, 30.0), np.full(999, 2.0), 30 + 2 * z, group_edges=())
    low, high = calibration.interval([30.0, 50.0], [2.0, 4.0], 0.8)
    # ranks floor(1000 * 0.1) = 100 and ceil(1000 * 0.9) = 900: z = -4.00 and 4.00
    assert np.allclose(low, [30 - 8, 50 - 16]) and np.allclose(high, [30 + 8, 50 + 16])
    assert calibration.probability_below([30.0], [2.0], 30.0)[0] == pytest.approx(0.5, abs=1e-3)
    assert calibration.probability_below([30.0], [2.0], 22.0)[0] == pytest.approx(0.1, abs=2e-3)


def test_a_calibration_set_too_small_for_the_level_gives_an_unbounded_interval():
    calibration = AgeCalibration.fit([20.0] * 4, [1.0] * 4, [18.0, 19.0, 21.0, 22.0], group_edges=())
    low, high = calibration.interval([20.0], [1.0], 0.9)  # needs rank ceil(5 * 0.95) = 5 of 4
    assert low[0] == 0 and high[0] == np.inf


def test_coverage_holds_on_fresh_faces_and_within_each_group():
    rng = np.random.default_rng(0)

    def faces(n):
        age = rng.uniform(8, 90, n)
        spread = rng.uniform(1, 8, n)
        noise = np.where(age < 18, 0.3, 1.5) * spread * rng.standard_t(5, n)  # children: narrower errors
        return age, spread, age + noise

    calibration = AgeCalibration.fit(*faces(4000))
    assert calibration.group_edges == (18.0, 65.0)
    age, spread, truth = faces(40000)
    for level in (0.8, 0.9):
        low, high = calibration.interval(age, spread, level)
        inside = (low <= truth) & (truth <= high)
        assert abs(inside.mean() - level) < 0.015
        assert abs(inside[age < 18].mean() - level) < 0.03 and abs(inside[age >= 65].mean() - level) < 0.03
    one_pool = AgeCalibration.fit(*faces(4000), group_edges=())
    low, high = one_pool.interval(age, spread, 0.8)
    assert ((low <= truth) & (truth <= high))[age < 18].mean() > 0.9  # children over-covered without groups


def test_small_groups_are_merged_into_their_neighbours():
    age = np.r_[np.full(150, 10.0), np.full(300, 40.0), np.full(20, 80.0)]
    calibration = AgeCalibration.fit(age, np.ones_like(age), age + 1, group_edges=(18, 65))
    assert calibration.group_edges == (18.0,) and [len(s) for s in calibration.scores] == [150, 320]


def test_gender_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, 20000)
    female = rng.random(20000) < sigmoid(logits / 2.5)  # the truth is 2.5 times less sure than the model
    raw = sigmoid(logits)
    fitted = GenderCalibration.fit(raw, female.astype(int))
    assert fitted.temperatures == (pytest.approx(2.5, rel=0.05),)
    calibrated = fitted.apply(raw)
    assert expected_calibration_error(calibrated, female) < 0.02 < 0.05 < expected_calibration_error(raw, female)
    assert ((calibrated > 0.5) == (raw > 0.5)).all() and fitted.apply(0.5) == pytest.approx(0.5)


def test_children_whose_gender_the_model_reads_near_chance_get_probabilities_near_a_half():
    """Issue 28: one temperature over all ages left children's P(female) as sure as adults'."""
    rng = np.random.default_rng(2)
    age = np.concatenate([rng.uniform(1, 9, 4000), rng.uniform(20, 70, 16000)])
    logits = rng.normal(0, 4, len(age))
    truth_scale = np.where(age < 10, 8.0, 1.0)  # children: the model is 8 times too sure
    female = rng.random(len(age)) < sigmoid(logits / truth_scale)
    raw = sigmoid(logits)
    banded = GenderCalibration.fit(raw, female.astype(int), age)
    assert banded.age_edges == (10.0, 18.0)
    assert banded.temperatures[0] == pytest.approx(8.0, rel=0.15) and banded.temperatures[2] == pytest.approx(1.0, rel=0.05)
    assert banded.temperatures[1] == GenderCalibration.fit(raw, female.astype(int)).temperatures[0]  # no teenager: pooled
    child = age < 10
    calibrated = banded.apply(raw, age)
    assert expected_calibration_error(calibrated[child], female[child]) < 0.03
    assert expected_calibration_error(GenderCalibration.fit(raw, female.astype(int)).apply(raw)[child], female[child]) > 0.1
    assert banded.describe() == f"{banded.temperatures[0]:.3f} under 10, {banded.temperatures[1]:.3f} 10-18, " \
                                f"{banded.temperatures[2]:.3f} from 18"


def test_calibration_round_trips_through_the_card():
    calibration = Calibration(AgeCalibration.fit([10.0, 40, 70] * 100, [2.0] * 300, [11.0, 39, 75] * 100),
                              GenderCalibration((3.0, 1.3), (10.0,)), {"faces": 300})
    card = json.loads(json.dumps({"calibration": calibration.to_dict()}))
    again = Calibration.from_card(card)
    assert again.gender == calibration.gender and again.age.group_edges == calibration.age.group_edges
    card_before_bands = {"calibration": {**card["calibration"], "gender": {"temperature": 1.3}}}
    assert Calibration.from_card(card_before_bands).gender == GenderCalibration((1.3,))
    assert np.allclose(again.age.interval([30.0], [3.0], 0.8), calibration.age.interval([30.0], [3.0], 0.8))
    assert Calibration.from_card({}) is None
    card["calibration"]["age"]["scores"] = [[3, 1, 2]]
    with pytest.raises(ModelFileError, match="unreadable calibration"):
        Calibration.from_card(card)
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_level(80)


def test_interval_and_threshold_metrics():
    truth = np.array([5.0, 15, 25, 35, 45])
    metrics = interval_metrics(truth, truth - 1, np.array([6.0, 14, 30, 40, 50]), level=0.8)
    assert metrics["coverage_80"] == 0.8 and metrics["median_width_80"] == 6.0
    assert metrics["coverage_80_10_19"] == 0.0 and metrics["coverage_80_0_9"] == 1.0 and metrics["coverage_80_90_99"] is None
    assert interval_metrics(truth, np.full(5, np.nan), np.full(5, np.nan), level=0.9)["coverage_90"] is None
    under = threshold_metrics(np.array([10.0, 12, 30, 40]), np.array([0.9, 0.4, 0.2, 0.0]))
    assert under["under_18_share"] == 0.5 and under["under_18_accuracy"] == 0.75
    assert under["under_18_brier"] == pytest.approx((0.01 + 0.36 + 0.04 + 0) / 4)
