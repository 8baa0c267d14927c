import numpy as np
import pytest

pytest.importorskip("torch")

from agestimate.training.augment import LatentInterpolator, augment, tail_pairs  # noqa: E402


def skewed_data(n_young=400, n_old=30, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    age = np.concatenate([rng.uniform(0, 45, n_young), rng.uniform(60, 75, n_old)]).astype(np.float32)
    gender = rng.integers(0, 2, len(age))
    X = (rng.normal(size=(len(age), dim)) + age[:, None] / 10).astype(np.float32)
    return X, age, gender


def test_tail_pairs_share_gender_stay_close_and_fill_only_rare_old_bins():
    X, age, gender = skewed_data()
    first, second, weights = tail_pairs(age, gender, window=3)
    assert len(first) > 0
    assert (age[first] >= 60).all()  # the young bins are not rare, 45-59 is empty
    assert (gender[first] == gender[second]).all()
    assert (np.abs(age[first] - age[second]) <= 3).all()
    assert ((weights >= 0) & (weights <= 1)).all()
    bins = (age[first] // 5).astype(int)
    real = np.bincount((age // 5).astype(int))
    assert (np.bincount(bins, minlength=len(real))[12:] <= real[12:]).all()  # capped at twice the real count


@pytest.mark.parametrize("method", ["mixup", "cae"])
def test_augment_appends_convex_samples_with_convex_labels(method):
    X, age, gender = skewed_data()
    X2, age2, gender2 = augment(X, age, gender, method=method)
    added = len(X2) - len(X)
    assert added > 0 and np.array_equal(X2[: len(X)], X) and np.array_equal(age2[: len(age)], age)
    assert (age2[len(age):] >= 60 - 3).all() and (age2[len(age):] <= 75).all()
    assert set(gender2[len(gender):].tolist()) <= {0, 1}
    assert X2.shape[1] == X.shape[1] and np.isfinite(X2).all()
    assert augment(X, age, gender, method="none")[0] is X


def test_the_autoencoder_reconstructs_its_training_features():
    X, _, _ = skewed_data(dim=64)
    interpolator = LatentInterpolator(X, latent=16, epochs=30)
    reconstructed = interpolator.reconstruct(X)
    cosine = (reconstructed * X).sum(1) / np.linalg.norm(reconstructed, axis=1) / np.linalg.norm(X, axis=1)
    assert np.median(cosine) > 0.7
    with pytest.raises(ValueError, match="augment must be one of"):
        augment(X, X[:, 0], X[:, 0], method="smote")
