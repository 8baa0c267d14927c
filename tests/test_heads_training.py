import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agestimate.errors import ModelFileError  # noqa: E402
from agestimate.heads.model import AgeGenderHeads  # noqa: E402
from agestimate.training.export import save_model_dir  # noqa: E402
from agestimate.training.fit import FittedHeads, HeadOptions, fit_heads  # noqa: E402
from agestimate.training.heads import AgeGenderNet, distribution_loss, gender_loss, variance_loss  # noqa: E402
from agestimate.training.references import encode_age_positions, select_references  # noqa: E402

N_TRAIN = 450
FAST = HeadOptions(epochs=8, batch_size=32, lr=3e-3, lr_step=5, hidden=64, dropout=0.1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: a second thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_data(n=600, d=32, seed=0):
    """Age a noisy linear function of the features, gender the side of a margin; every 10th gender unknown."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    age_direction, gender_direction = rng.normal(size=(2, d)) / np.sqrt(d)
    side = np.sign(X @ gender_direction)
    X = (X + side[:, None] * gender_direction).astype(np.float32)  # pull the two genders apart
    age = np.clip(np.rint(40 + 12 * X @ age_direction + rng.normal(scale=2, size=n)), 0, 100)
    gender = (side > 0).astype(np.int64)
    gender[::10] = -1
    return X, age, gender


def split(X, age, gender):
    return (X[:N_TRAIN], age[:N_TRAIN], gender[:N_TRAIN]), (X[N_TRAIN:], age[N_TRAIN:], gender[N_TRAIN:])


def train(options=FAST, data=None):
    (X_tr, a_tr, g_tr), (X_va, a_va, g_va) = split(*(data or synthetic_data()))
    return fit_heads(X_tr, a_tr, g_tr, X_va, a_va, g_va, options=options, device="cpu")


@pytest.fixture(scope="module")
def fitted() -> FittedHeads:
    return train()


@pytest.fixture(scope="module")
def model_dir(fitted, tmp_path_factory):
    return save_model_dir(fitted, tmp_path_factory.mktemp("heads"), card={"data": "synthetic", "best_epoch": -1})


def test_learns_age_and_gender(fitted):
    _, (X_val, age_val, gender_val) = split(*synthetic_data())
    baseline = np.abs(age_val - synthetic_data()[1][:N_TRAIN].mean()).mean()
    predicted = fitted.predict(X_val)
    assert np.abs(predicted["age"] - age_val).mean() < 0.5 * baseline
    known = gender_val >= 0
    assert ((predicted["prob_female"] > 0.5) == gender_val)[known].mean() > 0.8


def test_faces_with_only_a_gender_train_the_gender_head_and_not_the_age_heads():
    """LFW beside UTKFace: half the training faces have no age. Ages are learnt from the others,
    genders from all; no loss turns NaN, the RAPL references are faces with an age."""
    X, age, gender = synthetic_data()
    no_age = np.arange(len(X)) % 2 == 1
    no_age[N_TRAIN:] = False  # validation keeps its ages
    gender_only = age.astype(np.float32).copy()
    gender_only[no_age] = np.nan
    gender[~no_age & (np.arange(len(X)) < N_TRAIN)] = -1  # the faces with an age have no gender
    fitted = train(data=(X, gender_only, gender))
    assert all(np.isfinite(record["train_loss"]) for record in fitted.history)
    _, (X_val, age_val, gender_val) = split(X, age, synthetic_data()[2])
    predicted = fitted.predict(X_val)
    baseline = np.abs(age_val - age[:N_TRAIN].mean()).mean()
    assert np.abs(predicted["age"] - age_val).mean() < 0.5 * baseline
    known = gender_val >= 0
    assert ((predicted["prob_female"] > 0.5) == gender_val)[known].mean() > 0.8
    assert set(fitted.position_ages.tolist()) == set(age[:N_TRAIN][~no_age[:N_TRAIN]].tolist())


def test_first_epoch_skips_position_loss(fitted):
    assert "train_position_loss" not in fitted.history[0]
    assert all("train_position_loss" in record for record in fitted.history[1:])
    assert fitted.best_epoch >= 2
    assert fitted.history[fitted.best_epoch - 1]["val_mae"] == min(r["val_mae"] for r in fitted.history[1:])


def test_age_positions_follow_fig2():
    position_ages, positions = encode_age_positions([15, 16, 17, 72, 70, 15])
    assert position_ages.tolist() == [15, 16, 17, 70, 72]
    assert positions.tolist() == [0, 1, 2, 4, 3, 0]


def test_reference_is_min_error_sample_per_age():
    positions = torch.tensor([0, 1, 0, 2, 1, 2, 0])
    errors = torch.tensor([3.0, 1.0, 0.5, 2.0, 0.2, 2.0, 4.0])
    features = torch.arange(7.0)[:, None].repeat(1, 3)
    references, indices = select_references(errors, positions, features, n_positions=3)
    assert indices.tolist() == [2, 4, 3]  # position 2 ties: the lower index wins, as argmin does
    assert torch.equal(references, features[[2, 4, 3]])


def test_reference_selection_matches_algorithm_1_loop():
    rng = np.random.default_rng(1)
    positions = rng.integers(0, 20, size=500)
    positions[:20] = np.arange(20)
    errors, features = rng.random(500), rng.normal(size=(500, 8))
    expected = []
    for label in range(20):  # Algorithm 1, line by line
        members = np.flatnonzero(positions == label)
        expected.append(members[np.argmin(errors[members])])
    references, indices = select_references(
        torch.from_numpy(errors), torch.from_numpy(positions), torch.from_numpy(features), n_positions=20
    )
    assert indices.tolist() == expected
    assert torch.equal(references, torch.from_numpy(features[expected]))


def test_gender_loss_ignores_unknown_labels():
    gender = torch.tensor([0, 1, -1, 1, -1])
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    changed = logits.clone()
    changed[gender == -1] = torch.tensor([50.0, -50.0])
    assert torch.equal(gender_loss(logits, gender), gender_loss(changed, gender))
    known = gender >= 0
    assert torch.allclose(gender_loss(logits, gender), torch.nn.functional.cross_entropy(logits[known], gender[known]))
    nothing_known = torch.full((5,), -1)
    assert gender_loss(logits.requires_grad_(), nothing_known).item() == 0.0


def test_gender_loss_weights_samples():
    gender = torch.tensor([0, 1, -1, 1])
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    each = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], gender[[0, 1, 3]], reduction="none")
    weight = torch.tensor([3.0, 1.0, 5.0, 1.0])  # the unknown sample's weight counts for nothing
    assert torch.allclose(gender_loss(logits, gender, weight), (each * torch.tensor([3.0, 1.0, 1.0])).sum() / 5)
    assert torch.allclose(gender_loss(logits, gender, torch.ones(4)), gender_loss(logits, gender))


def test_child_gender_weight_is_positive_and_changes_training(fitted):
    with pytest.raises(ValueError, match="child_gender_weight"):
        HeadOptions(child_gender_weight=0)
    weighted = train(HeadOptions(**{**vars(FAST), "child_gender_weight": 4.0}))
    assert weighted.history[0]["train_gender_loss"] != fitted.history[0]["train_gender_loss"]


def test_distribution_sharpening_losses(fitted):
    grid = torch.arange(11, dtype=torch.float32)
    point, spread = torch.zeros(1, 11), torch.full((1, 11), 1 / 11)
    point[0, 4] = 1.0
    assert variance_loss(point, grid).item() == 0.0
    assert variance_loss(spread, grid).item() == pytest.approx(10.0)  # uniform over 0..10
    target = torch.softmax(-0.5 * ((grid - 4) / 2.0) ** 2, dim=0)[None]
    best = distribution_loss(target, grid, torch.tensor([4.0]), 2.0)
    assert best.item() < distribution_loss(spread, grid, torch.tensor([4.0]), 2.0).item()
    assert best.item() < distribution_loss(target, grid, torch.tensor([7.0]), 2.0).item()
    sharp = train(HeadOptions(**{**vars(FAST), "variance_weight": 0.5}))
    assert "train_variance_loss" in sharp.history[-1]
    assert predicted_variance(sharp) < 0.7 * predicted_variance(fitted)
    with pytest.raises(ValueError, match="evr"):
        HeadOptions(regression="fc", variance_weight=0.1)


def predicted_variance(fitted):
    """Mean variance of the age distributions a model predicts for the synthetic validation faces."""
    (_, _, _), (X_va, _, _) = split(*synthetic_data())
    with torch.no_grad():
        out = fitted.model(torch.from_numpy(X_va))
    return variance_loss(out["age_probs"], fitted.model.age_grid).item()


def test_position_logits_equal_eq6_written_out():
    torch.manual_seed(0)
    b, d, c, n = 4, 6, 5, 3
    net = AgeGenderNet(torch.zeros(d), torch.ones(d), torch.tensor([20.0, 30.0, 40.0]), hidden=c, max_age=50)
    net.set_references(torch.rand(n, c))
    with torch.no_grad():
        net.age_encoding.normal_()
        features = torch.rand(b, c)
        weights = torch.sigmoid(net.reference_features.T * net.age_encoding)  # Eq. 4-5, (c, n)
        reweighted = features[:, :, None].expand(b, c, n) * weights  # Eq. 6, (b, c, n)
        summed = net.age_summary(reweighted)[..., 0]  # FC(n -> 1), (b, c)
        assert torch.allclose(net.position_logits(features), net.position_head(summed), atol=1e-6)


def test_same_seed_same_model():
    options = HeadOptions(epochs=3, batch_size=64, hidden=32, seed=7)
    first, second = train(options), train(options)
    assert first.history == second.history
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    other = train(HeadOptions(epochs=3, batch_size=64, hidden=32, seed=8))
    assert other.history != first.history


def test_onnx_heads_match_torch(fitted, model_dir):
    heads = AgeGenderHeads.load(model_dir)
    X = synthetic_data()[0]
    out = heads.predict(X, batch_size=128)
    with torch.no_grad():
        reference = fitted.model(torch.from_numpy(X))
    np.testing.assert_allclose(out.age, reference["age"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out.age_probs, reference["age_probs"].numpy(), atol=1e-5)
    female = torch.softmax(reference["gender_logits"], dim=1)[:, 1].numpy()
    np.testing.assert_allclose(out.prob_female, female, atol=1e-5)
    position_probs = torch.softmax(reference["position_logits"], dim=1).numpy()
    np.testing.assert_allclose(out.position_age, fitted.position_ages[position_probs.argmax(axis=1)])
    within = np.abs(out.age[:, None] - fitted.position_ages[None, :]) <= 3  # Eq. 12 per face, t = 3 years
    np.testing.assert_allclose(out.confidence, (position_probs * within).sum(axis=1), atol=1e-4)
    expected_spread = np.sqrt((out.age_probs * (heads.age_labels - out.age[:, None]) ** 2).sum(axis=1))
    np.testing.assert_allclose(out.age_spread, expected_spread, atol=1e-2)
    assert set(np.unique(out.gender)) <= {0, 1}


def test_confidence_grows_with_tolerance(model_dir):
    heads = AgeGenderHeads.load(model_dir)
    X = synthetic_data()[0][:50]
    tight, loose = (heads.predict(X, confidence_tolerance=t).confidence for t in (1, 10))
    assert (loose >= tight - 1e-6).all()
    assert np.allclose(heads.predict(X, confidence_tolerance=1000).confidence, 1.0, atol=1e-5)


def test_model_card(fitted, model_dir):
    card = json.loads((model_dir / "model.json").read_text())
    assert card["data"] == "synthetic"
    assert card["best_epoch"] == fitted.best_epoch  # the trained model's value wins over the card's
    assert card["input_dim"] == 32 and card["max_age"] == 100
    assert card["position_ages"] == fitted.position_ages.tolist()
    assert card["options"]["hidden"] == 64 and len(card["history"]) == FAST.epochs
    assert set(card["versions"]) == {"torch", "onnx", "onnxruntime", "agestimate"}


@pytest.mark.parametrize(
    ("regression", "use_rapl", "use_gender"), [("fc", False, False), ("evr", False, True), ("evr", True, False)]
)
def test_ablation_variants_export(tmp_path, regression, use_rapl, use_gender):
    options = HeadOptions(
        epochs=3, batch_size=64, hidden=32, regression=regression, use_rapl=use_rapl, use_gender=use_gender
    )
    fitted = train(options)
    heads = AgeGenderHeads.load(save_model_dir(fitted, tmp_path))
    X = synthetic_data()[0][N_TRAIN:]
    out = heads.predict(X)
    np.testing.assert_allclose(out.age, fitted.predict(X)["age"], atol=1e-4)
    np.testing.assert_allclose(out.age_probs.sum(axis=1), 1.0, atol=1e-5)
    assert len(heads.position_ages) == (len(fitted.position_ages) if use_rapl else 101)
    if not use_gender:
        assert (out.gender == -1).all() and (out.prob_female == 0.5).all()


def test_old_ages_are_clipped_and_logged(caplog):
    X, age, gender = synthetic_data()
    age[:3] = 110
    with caplog.at_level(logging.INFO, logger="agestimate.training.fit"):
        fitted = train(HeadOptions(epochs=2, hidden=16, max_age=100), data=(X, age, gender))
    assert "clipped 3 training ages" in caplog.text
    assert fitted.position_ages.max() == 100


def test_training_input_errors():
    X, age, gender = synthetic_data(n=500)
    with pytest.raises(ValueError, match="no training sample has a known gender"):
        train(data=(X, age, np.full_like(gender, -1)))
    with pytest.raises(ValueError, match="epochs >= 2"):
        HeadOptions(epochs=1)
    with pytest.raises(ValueError, match="gender_train"):
        train(data=(X, age, np.full_like(gender, 2)))


def test_heads_predict_edge_cases(model_dir):
    heads = AgeGenderHeads.load(model_dir)
    empty = heads.predict(np.zeros((0, 32), np.float32))
    assert len(empty) == 0 and empty.age_probs.shape == (0, 101)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        heads.predict(np.zeros((3, 31), np.float32))


def test_heads_load_errors_name_the_path(model_dir, tmp_path):
    with pytest.raises(ModelFileError, match="model.json"):
        AgeGenderHeads.load(tmp_path)
    (tmp_path / "model.json").write_text((model_dir / "model.json").read_text())
    with pytest.raises(ModelFileError, match="heads.onnx"):
        AgeGenderHeads.load(tmp_path)
    (tmp_path / "heads.onnx").mkdir()
    with pytest.raises(ModelFileError, match="not a regular file"):
        AgeGenderHeads.load(tmp_path)
    (tmp_path / "heads.onnx").rmdir()
    (tmp_path / "heads.onnx").write_bytes((model_dir / "heads.onnx").read_bytes()[:100])
    with pytest.raises(ModelFileError, match="heads.onnx"):
        AgeGenderHeads.load(tmp_path)
