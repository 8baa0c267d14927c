import numpy as np
import pytest

from agestimate.evaluation.metrics import (
    age_group,
    age_group_labels,
    age_metrics,
    bias,
    cumulative_score,
    exact_accuracy,
    gender_accuracy,
    mae,
    mae_by_group,
    one_off_accuracy,
    summary,
)

Y_TRUE = [10, 20, 30, 40]
Y_PRED = [12, 20, 25, 50]  # errors 2, 0, 5, 10


def test_mae_and_cumulative_score():
    assert mae(Y_TRUE, Y_PRED) == pytest.approx(4.25)
    assert cumulative_score(Y_TRUE, Y_PRED) == pytest.approx(0.75)  # |err| <= 5 counts
    assert cumulative_score(Y_TRUE, Y_PRED, tolerance=1) == pytest.approx(0.25)


def test_adience8_groups_at_cut_points():
    ages = [0, 2.99, 3, 6.9, 7, 13.49, 13.5, 22.5, 35, 45.5, 56.49, 56.5, 120]
    assert age_group(ages, "adience8").tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 6, 7, 7]
    assert age_group_labels("adience8") == ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60+"]


def test_fixed_width_bins_end_open():
    assert age_group([0, 4.9, 5, 99.9, 100, 150], "bins5").tolist() == [0, 0, 1, 19, 20, 20]
    assert age_group([9.99, 10, 100, 250], "bins10").tolist() == [0, 1, 10, 10]
    assert age_group_labels("bins10") == [f"{10 * i}-{10 * i + 9}" for i in range(10)] + ["100+"]
    assert len(age_group_labels("bins5")) == 21


def test_one_off_and_exact_accuracy():
    y_true, y_pred = [5, 30, 70, 1], [10, 40, 40, 1]  # groups 1,4,7,0 vs 2,5,5,0
    assert one_off_accuracy(y_true, y_pred, scheme="adience8") == pytest.approx(0.75)
    assert exact_accuracy(y_true, y_pred, scheme="adience8") == pytest.approx(0.25)
    assert one_off_accuracy([0, 14], [10, 5], scheme="bins5") == pytest.approx(0.5)  # groups 0/2 and 2/1


def test_gender_accuracy_ignores_unknown():
    assert gender_accuracy([0, 1, 1, -1, -1], [0, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert gender_accuracy([-1, -1], [0, 1]) is None
    assert gender_accuracy([0, 1], [-1, -1]) is None  # a model without a gender head


def test_bias_is_signed_predicted_minus_true():
    assert bias(Y_TRUE, Y_PRED) == pytest.approx((2 + 0 - 5 + 10) / 4)
    assert bias([30, 30], [20, 40]) == 0.0  # errors that cancel: MAE 10, no bias
    assert mae_by_group(Y_TRUE, Y_PRED, ["a", "a", "b", "b"], signed=True) == {"a": 1.0, "b": 2.5}


def test_mae_by_group():
    assert mae_by_group(Y_TRUE, Y_PRED, ["a", "a", "b", "b"]) == {"a": 1.0, "b": 7.5}
    assert mae_by_group(Y_TRUE, Y_PRED, np.array([2, 1, 2, 1])) == {1: 5.0, 2: 3.5}


def test_summary_keys_and_values():
    result = summary([10, 20, 65, 75], [12, 20, 60, 85], gender_true=[0, 1, -1, 1], gender_pred=[0, 0, 1, 1])
    assert result["n"] == 4
    assert result["mae"] == pytest.approx(17 / 4)
    assert result["cs5"] == pytest.approx(0.75)
    assert result["mae_60plus"] == pytest.approx(7.5)
    assert result["mae_10_19"] == pytest.approx(2.0)
    assert result["mae_0_9"] is None and result["mae_100plus"] is None
    assert result["bias"] == pytest.approx((2 + 0 - 5 + 10) / 4)
    assert result["bias_60_69"] == pytest.approx(-5.0) and result["bias_70_79"] == pytest.approx(10.0)
    assert result["bias_0_9"] is None
    assert result["gender_accuracy"] == pytest.approx(2 / 3)
    assert result["gender_accuracy_10_19"] == 1.0 and result["gender_accuracy_20_29"] == 0.0
    assert result["gender_accuracy_60_69"] is None and result["gender_accuracy_70_79"] == 1.0  # 65's gender is unknown
    # groups of true/predicted age: Adience-8 2/2 3/3 7/7 7/7, 5-year 2/2 4/4 13/12 15/17, 10-year 1/1 2/2 6/6 7/8
    expected = {"one_off_adience8": 1.0, "exact_adience8": 1.0, "one_off_bins5": 0.75, "exact_bins5": 0.5,
                "one_off_bins10": 1.0, "exact_bins10": 0.75}
    assert {key: result[key] for key in expected} == expected


def test_summary_measures_each_label_on_the_faces_that_have_it():
    """Gender-only faces (LFW) count for gender, age-only ones (FG-NET) for age; children's gender apart."""
    nan = float("nan")
    result = summary([nan, nan, 5, 11, 40, 30], [20, 30, 7, 12, 43, 30], gender_true=[1, 0, 0, 1, 1, -1],
                     gender_pred=[1, 1, 1, 1, 1, 0])
    assert result["n"] == 4 and result["n_gender"] == 5
    assert result["mae"] == pytest.approx((2 + 1 + 3 + 0) / 4)
    assert result["gender_accuracy"] == pytest.approx(3 / 5)
    assert result["gender_accuracy_under_10"] == 0.0 and result["gender_accuracy_under_13"] == 0.5
    assert result["gender_accuracy_0_9"] == 0.0 and result["gender_accuracy_40_49"] == 1.0
    only_gender = summary([nan, nan], [20, 30], gender_true=[1, 0], gender_pred=[1, 0])
    assert only_gender["n"] == 0 and only_gender["mae"] is None and only_gender["gender_accuracy"] == 1.0


def test_summary_unknowns_are_none():
    result = summary([10, 20], [11, 21])
    assert result["gender_accuracy"] is None and result["gender_accuracy_10_19"] is None and result["mae_60plus"] is None
    empty = age_metrics([], [])
    assert empty["n"] == 0 and empty["mae"] is None and empty["one_off_adience8"] is None
    assert set(empty) == set(age_metrics([10], [10]))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="adience9"):
        age_group([1, 2], "adience9")
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        mae([1, 2, 3], [1, 2])
