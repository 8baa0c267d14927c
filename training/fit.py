"""Training loop for the age/gender heads: Adam, step decay, best epoch on validation MAE."""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from agestimate.evaluation.metrics import GENDER_BANDS

from .heads import UNKNOWN_GENDER, AgeGenderNet, joint_loss
from .references import encode_age_positions, select_references

logger = logging.getLogger(__name__)

CHILD_AGE = GENDER_BANDS[-1]  # 13: `HeadOptions.child_gender_weight` weighs the faces the reports call children


@dataclass(frozen=True)
class HeadOptions:
    """Hyper-parameters of `fit_heads`.

    The paper fine-tunes a backbone with batch 64, lr 1e-5, weight decay 1e-2 and a step
    decay of 0.1 every 10 of 30 epochs. The heads here start from scratch on frozen
    embeddings, so the defaults differ where measurement said so (UTKFace validation MAE,
    single runs, seed-to-seed noise about 0.1):
    lr 1e-3 (3e-3: 5.65, 5e-4: 5.09 vs 4.77), weight decay 1e-4 (1e-2: 5.02 vs 4.97),
    dropout 0.3 (0.1: 4.91, 0.2: 4.82 vs 4.77).

    Attributes
    ----------
    epochs : int
        Passes over the training set (at least 2 with RAPL: epoch 1 has no references).
    batch_size : int
        Mini-batch size.
    lr, weight_decay : float
        Adam learning rate and (L2) weight decay.
    lr_step, lr_gamma : int, float
        StepLR: multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs.
    hidden : int
        Width c of the trunk features.
    dropout : float
        Dropout before each linear layer of the trunk.
    max_age : int
        Ages 0..max_age for the EVR head; older training labels are clipped to it.
    use_rapl, use_gender : bool
        Train the RAPL position head / the gender head.
    regression : {"evr", "fc"}
        Expected value refinement, or the plain FC regression ablation.
    lam, mu : float
        Weights of the gender and position losses (Eq. 8).
    variance_weight : float
        Weight of the variance term of the mean-variance loss (0: off; the paper's 0.05).
    distribution_weight, distribution_sigma : float
        Weight (0: off) of the label distribution loss, and the width in years of its
        Gaussian target around each true age.
    child_gender_weight : float
        Weight in the gender loss of the faces under `CHILD_AGE` (13) years, the others 1:
        a child's face carries less gender signal and children are few, so their share of
        the gender loss is raised (faces of unknown age weigh 1).
    seed : int
        Seed for initialisation, shuffling and dropout.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    hidden: int = 256
    dropout: float = 0.3
    max_age: int = 100
    use_rapl: bool = True
    use_gender: bool = True
    regression: str = "evr"
    lam: float = 1.0
    mu: float = 1.0
    variance_weight: float = 0.0
    distribution_weight: float = 0.0
    distribution_sigma: float = 2.0
    child_gender_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.regression not in ("evr", "fc"):
            raise ValueError(f"regression must be 'evr' or 'fc', got {self.regression!r}")
        if self.use_rapl and self.epochs < 2:
            raise ValueError(f"RAPL needs epochs >= 2 (epoch 1 has no references), got epochs={self.epochs}")
        if (self.variance_weight or self.distribution_weight) and self.regression != "evr":
            raise ValueError("variance_weight and distribution_weight shape the EVR age distribution: regression='evr'")
        if self.child_gender_weight <= 0:
            raise ValueError(f"child_gender_weight must be positive, got {self.child_gender_weight}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")


@dataclass
class FittedHeads:
    """A trained `AgeGenderNet` and what is needed to describe and export it.

    Attributes
    ----------
    model : AgeGenderNet
        The best epoch's network, on CPU, in eval mode, with that epoch's reference map R.
    options : HeadOptions
        The options it was trained with.
    position_ages : ndarray of float32, shape (n,)
        Age of each RAPL position (the distinct training ages).
    best_epoch : int
        1-based epoch with the lowest validation MAE (among epochs >= 2 with RAPL, whose
        position head has been trained); the last epoch when trained without validation.
    history : list of dict
        Per epoch: ``epoch``, ``lr``, ``train_loss`` (and its ``train_age_loss`` /
        ``train_gender_loss`` / ``train_position_loss`` parts) and ``val_mae`` (with validation).
    """

    model: AgeGenderNet
    options: HeadOptions
    position_ages: np.ndarray
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def input_dim(self) -> int:
        return int(self.model.feature_mean.shape[0])

    @property
    def age_labels(self) -> np.ndarray:
        """The ages 0..max_age of the EVR distribution, shape (n_ages,)."""
        return self.model.age_grid.numpy().copy()

    def predict(self, X, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """Expected age (N,) and, with a gender head, P(female) (N,) for features X (N, d), with torch."""
        outputs = _predict(self.model, _as_features(X, "X"), batch_size=batch_size, device=torch.device("cpu"))
        return {k: v.numpy() for k, v in outputs.items()}


def _as_features(X, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N > 0, got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _as_labels(age, gender, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    age = np.asarray(age, dtype=np.float32)
    gender = np.full(n, UNKNOWN_GENDER) if gender is None else np.asarray(gender)
    gender = gender.astype(np.int64)
    if age.shape != (n,) or gender.shape != (n,):
        raise ValueError(f"age_{name} and gender_{name} must have shape ({n},), got {age.shape} and {gender.shape}")
    if np.isinf(age).any() or (age < 0).any():
        raise ValueError(f"age_{name} must be >= 0 or NaN (unknown), min is {np.nanmin(age)}")
    if np.isnan(age).all():
        raise ValueError(f"age_{name}: no sample has a known age")
    if not np.isin(gender, (UNKNOWN_GENDER, 0, 1)).all():
        raise ValueError(f"gender_{name} must be 0 (male), 1 (female) or -1 (unknown), got {np.unique(gender)}")
    return age, gender


def resolve_device(device=None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def _predict(model: AgeGenderNet, X: np.ndarray, *, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    model.eval()
    ages, females = [], []
    for start in range(0, len(X), batch_size):
        out = model(torch.from_numpy(X[start : start + batch_size]).to(device))
        ages.append(out["age"].clamp(0, model.max_age).cpu())
        if "gender_logits" in out:
            females.append(torch.softmax(out["gender_logits"], dim=-1)[:, 1].cpu())
    result = {"age": torch.cat(ages)}
    if females:
        result["prob_female"] = torch.cat(females)
    return result


def _train_epoch(model, optimizer, batches, data, saved, *, options: HeadOptions) -> dict[str, float]:
    """One pass of mini-batch training; saves each sample's features F and expected age for Algorithm 1.

    ``data`` is (X, ages, genders, positions, gender weights or None) and ``saved`` is (features (K, c), ages (K,)),
    filled in place. Returns the mean ``train_loss`` and its parts over the batches.
    """
    X, ages, genders, positions, gender_weights = data
    saved_features, saved_ages = saved
    model.train()
    sums = {}
    for batch in batches:
        outputs = model(X[batch])
        loss, parts = joint_loss(outputs, ages[batch], genders[batch], positions[batch], lam=options.lam, mu=options.mu,
                                 variance_weight=options.variance_weight, distribution_weight=options.distribution_weight,
                                 distribution_sigma=options.distribution_sigma, age_grid=model.age_grid,
                                 gender_sample_weights=None if gender_weights is None else gender_weights[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        saved_features[batch] = outputs["features"].detach()
        saved_ages[batch] = outputs["age"].detach()
        for name, value in {"train_loss": loss.item(), **{f"train_{k}_loss": v for k, v in parts.items()}}.items():
            sums[name] = sums.get(name, 0.0) + value
    return {name: total / len(batches) for name, total in sums.items()}


def fit_heads(
    X_train,
    age_train,
    gender_train,
    X_val,
    age_val,
    gender_val,
    *,
    options: HeadOptions = HeadOptions(),
    device=None,
    progress: bool = False,
) -> FittedHeads:
    """Train the age/gender heads on embeddings and keep the epoch with the best validation MAE.

    Before every epoch but the first, the RAPL reference map R is rebuilt by Algorithm 1 from
    the features and expected ages saved while training the previous epoch; the first epoch
    has no R, so its position loss is skipped.

    Parameters
    ----------
    X_train : array-like, shape (K, d)
        Training features (any width d: embeddings or wider feature blocks), converted to float32.
    age_train : array-like, shape (K,)
        Training ages in years, NaN where unknown (a face labelled with its gender only: it
        trains the gender head and the trunk, not the age heads); ages above
        ``options.max_age`` are clipped to it (logged).
    gender_train : array-like of int, shape (K,), or None
        0 male, 1 female, -1 unknown (left out of the gender loss); None means all unknown.
    X_val, age_val, gender_val
        The validation set, same conventions; only its MAE (over the faces with an age) is used
        to pick the best epoch.
        ``X_val=None``: no validation set, the last epoch is kept (to refit on more data
        for an epoch count chosen before).
    options : HeadOptions
        Hyper-parameters.
    device : str or torch.device, optional
        Where to train; None picks CUDA when available, else CPU. The result is on CPU.
    progress : bool
        Show a tqdm bar over epochs (train loss, validation MAE) on stderr.

    Returns
    -------
    FittedHeads
    """
    X_train = _as_features(X_train, "X_train")
    age_train, gender_train = _as_labels(age_train, gender_train, len(X_train), "train")
    if X_val is not None:
        X_val = _as_features(X_val, "X_val")
        if X_val.shape[1] != X_train.shape[1]:
            raise ValueError(f"X_val has {X_val.shape[1]} features but X_train has {X_train.shape[1]}")
        age_val, _ = _as_labels(age_val, gender_val, len(X_val), "val")
    if options.use_gender and not (gender_train != UNKNOWN_GENDER).any():
        raise ValueError("use_gender=True but no training sample has a known gender; set use_gender=False")
    device = resolve_device(device)

    n_clipped = int((age_train > options.max_age).sum())
    if n_clipped:
        logger.info("clipped %d training ages above max_age=%d", n_clipped, options.max_age)
    age_train = np.minimum(age_train, options.max_age)
    aged = ~np.isnan(age_train)
    position_ages, aged_positions = encode_age_positions(age_train[aged])
    positions = np.full(len(age_train), -1, np.int64)  # faces without an age have no position
    positions[aged] = aged_positions

    torch.manual_seed(options.seed)
    shuffle = torch.Generator().manual_seed(options.seed)
    model = AgeGenderNet(
        torch.from_numpy(X_train.mean(axis=0)),
        torch.from_numpy(np.maximum(X_train.std(axis=0), 1e-6)),
        torch.from_numpy(position_ages),
        hidden=options.hidden,
        dropout=options.dropout,
        max_age=options.max_age,
        regression=options.regression,
        use_gender=options.use_gender,
        use_rapl=options.use_rapl,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=options.lr_step, gamma=options.lr_gamma)

    X = torch.from_numpy(X_train).to(device)
    ages = torch.from_numpy(age_train).to(device)
    genders = torch.from_numpy(gender_train).to(device)
    positions = torch.from_numpy(positions).to(device)
    gender_weights = None if options.child_gender_weight == 1 else torch.from_numpy(  # NaN < 13 is False: weight 1
        np.where(age_train < CHILD_AGE, options.child_gender_weight, 1.0).astype(np.float32)).to(device)
    saved_features = torch.zeros(len(X), options.hidden, device=device)
    saved_ages = torch.zeros(len(X), device=device)
    aged = torch.from_numpy(aged).to(device)  # the references are faces with an age

    history, best, best_mae = [], None, np.inf
    bar = tqdm(range(1, options.epochs + 1), desc="heads", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in bar:
        if options.use_rapl and epoch > 1:
            references, _ = select_references(
                (saved_ages - ages)[aged].abs(), positions[aged], saved_features[aged], n_positions=model.n_positions
            )
            model.set_references(references)
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(X), generator=shuffle).to(device)
        train_losses = _train_epoch(
            model, optimizer, order.split(options.batch_size), (X, ages, genders, positions, gender_weights),
            (saved_features, saved_ages), options=options,
        )
        scheduler.step()

        record = {"epoch": epoch, "lr": lr, **train_losses}
        if X_val is not None:
            val_age = _predict(model, X_val, batch_size=8192, device=device)["age"].numpy()
            record["val_mae"] = float(np.nanmean(np.abs(val_age - age_val)))
        history.append(record)
        logger.debug("epoch %d: %s", epoch, record)
        bar.set_postfix(train_loss=f"{record['train_loss']:.3f}", val_mae=f"{record.get('val_mae', np.nan):.3f}")
        if X_val is None:
            continue
        # With RAPL, epoch 1 has an untrained position head and no R: not a candidate.
        if record["val_mae"] < best_mae and not (options.use_rapl and epoch == 1):
            best, best_mae = (epoch, copy.deepcopy(model)), record["val_mae"]
    if X_val is None:
        best, best_mae = (options.epochs, model), np.nan

    if best is None:
        raise RuntimeError(f"validation MAE was never finite: {[r['val_mae'] for r in history]}")
    best_epoch, best_model = best
    logger.info("best epoch %d of %d, validation MAE %.3f", best_epoch, options.epochs, best_mae)
    return FittedHeads(
        model=best_model.cpu().eval(),
        options=options,
        position_ages=position_ages,
        best_epoch=best_epoch,
        history=history,
    )
