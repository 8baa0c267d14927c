"""The torch age/gender heads of the RAPL paper, applied to face embeddings, and their losses.

Section III of Amirullaeva & Han (2024), with the IR50 backbone replaced by a small trunk
over fixed embeddings:

- trunk: standardise the input with the training mean/std, then two blocks of
  Linear + LayerNorm + ReLU (d -> c -> c), with dropout before each Linear; its output is
  the feature F of the paper (b, c). Measured on ArcFace (w600k_mbf) embeddings of UTKFace,
  validation MAE: two blocks 4.77 vs one 4.89 (dropout 0.3); LayerNorm 4.97 vs BatchNorm
  5.11 and c = 256 4.97 vs c = 128 5.26 (one block, dropout 0.1); single runs, seed-to-seed
  noise is about 0.1;
- age, "evr": FC(c -> n_ages) + softmax over the ages 0..max_age, expected age (Eq. 1),
  L1 loss (Eq. 2); age, "fc": FC(c -> 1) regression with the same L1 loss (ablation);
- gender: FC(c -> 2), cross-entropy (Eq. 3) over the samples whose gender is known;
- RAPL: the age-based reweighting module (Eq. 4-6) over the reference map R, FC(n -> 1),
  FC(c -> n) over age positions, cross-entropy (Eq. 7);
- joint loss L_age + lambda L_gender + mu L_position (Eq. 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agestimate.io.labels import UNKNOWN_GENDER


class AgeGenderNet(nn.Module):
    """Trunk plus EVR (or FC) age head, optional gender head and optional RAPL position head.

    Parameters
    ----------
    feature_mean, feature_std : Tensor, shape (d,)
        Training-set statistics used to standardise the input; stored as buffers, so an
        exported model standardises by itself.
    position_ages : Tensor, shape (n,)
        Age of each RAPL position (the distinct training ages, ascending).
    hidden : int
        Width c of the trunk features F.
    dropout : float
        Dropout before each Linear of the trunk (not on F itself: it would blur the saved
        references, and measured worse).
    max_age : int
        The EVR head spreads its probability over the ages 0..max_age.
    regression : {"evr", "fc"}
        Expected value over an age distribution, or plain regression (the paper's FC ablation).
    use_gender, use_rapl : bool
        Build the gender head and the RAPL position head.

    Notes
    -----
    The reference map R (``reference_features``, (n, c)) starts as zeros and is filled by
    `set_references` before each epoch but the first (Algorithm 1). Until then
    ``references_ready`` is False and `forward` yields no position logits, so the position
    loss of the first epoch is skipped.
    """

    def __init__(
        self,
        feature_mean: torch.Tensor,
        feature_std: torch.Tensor,
        position_ages: torch.Tensor,
        *,
        hidden: int = 256,
        dropout: float = 0.3,
        max_age: int = 100,
        regression: str = "evr",
        use_gender: bool = True,
        use_rapl: bool = True,
    ):
        super().__init__()
        if regression not in ("evr", "fc"):
            raise ValueError(f"regression must be 'evr' or 'fc', got {regression!r}")
        input_dim = feature_mean.shape[0]
        n_positions = position_ages.shape[0]
        self.regression = regression
        self.use_gender = use_gender
        self.use_rapl = use_rapl
        self.max_age = max_age
        self.references_ready = False
        self.register_buffer("feature_mean", feature_mean.float().clone())
        self.register_buffer("feature_std", feature_std.float().clone())
        self.register_buffer("age_grid", torch.arange(max_age + 1, dtype=torch.float32))
        self.register_buffer("position_ages", position_ages.float().clone())
        self.register_buffer("reference_features", torch.zeros(n_positions, hidden))

        self.input_dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(input_dim, hidden)  # export folds the standardisation into it
        self.layers = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
        )
        self.age_head = nn.Linear(hidden, max_age + 1 if regression == "evr" else 1)
        self.gender_head = nn.Linear(hidden, 2) if use_gender else None
        if use_rapl:
            self.age_encoding = nn.Parameter(torch.ones(n_positions))  # P of Eq. 4
            self.age_summary = nn.Linear(n_positions, 1)  # FC(n -> 1)
            self.position_head = nn.Linear(hidden, n_positions)  # FC(c -> n)

    @property
    def n_positions(self) -> int:
        return self.position_ages.shape[0]

    def set_references(self, references: torch.Tensor) -> None:
        """Install the reference map R, shape (n, c), chosen by Algorithm 1."""
        self.reference_features.copy_(references)
        self.references_ready = True

    def age_weights(self) -> torch.Tensor:
        """Age weights W = sigmoid(R^T * P) (Eq. 4-5), shape (c, n)."""
        return torch.sigmoid(self.reference_features.T * self.age_encoding)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Features F, shape (b, c), of raw input x, shape (b, d)."""
        standardised = (x - self.feature_mean) / self.feature_std
        return self.layers(self.projection(self.input_dropout(standardised)))

    def position_channel_scale(self) -> torch.Tensor:
        """``W v``, shape (c,): Eq. 6 followed by FC(n -> 1) scales channel i of F by it."""
        return self.age_weights() @ self.age_summary.weight[0]

    def position_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Relative age position logits of features F, shape (b, c) -> (b, n).

        Eq. 6 repeats F n times and multiplies by W, (b, c, n); FC(n -> 1) then sums over n.
        Both are linear in F, so ``sum_k F[b, i] W[i, k] v[k] = F[b, i] (W v)[i]`` gives the
        same numbers without the (b, c, n) tensor.
        """
        per_channel = features * self.position_channel_scale() + self.age_summary.bias
        return self.position_head(per_channel)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run all heads on a batch.

        Parameters
        ----------
        x : Tensor, shape (b, d)
            Raw (unstandardised) input features.

        Returns
        -------
        dict of Tensor
            ``features`` (b, c); ``age`` (b,) (unclipped for "fc"); ``age_probs`` (b, n_ages):
            the softmax for "evr", for "fc" the two-point distribution on the whole ages either
            side of the clipped regression; ``gender_logits`` (b, 2) with a gender head;
            ``position_logits`` (b, n) with RAPL once the references are set.
        """
        features = self.trunk(x)
        out = {"features": features}
        age_out = self.age_head(features)
        if self.regression == "evr":
            out["age_probs"] = torch.softmax(age_out, dim=-1)
            out["age"] = out["age_probs"] @ self.age_grid  # Eq. 1
        else:
            out["age"] = age_out[:, 0]
            clipped = out["age"].clamp(0, self.max_age)[:, None]
            out["age_probs"] = torch.relu(1 - (self.age_grid - clipped).abs())
        if self.use_gender:
            out["gender_logits"] = self.gender_head(features)
        if self.use_rapl and self.references_ready:
            out["position_logits"] = self.position_logits(features)
        return out


def age_loss(age_pred: torch.Tensor, age_true: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (Eq. 2) over the samples with a known age (NaN: a face labelled with
    its gender only); both (b,)."""
    known = ~torch.isnan(age_true)
    if not known.any():
        return age_pred.sum() * 0.0
    return F.l1_loss(age_pred[known], age_true[known])


def gender_loss(gender_logits: torch.Tensor, gender: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (Eq. 3) over the samples with a known gender.

    Parameters
    ----------
    gender_logits : Tensor, shape (b, 2)
        Logits for [male, female].
    gender : Tensor of int64, shape (b,)
        0 male, 1 female, -1 unknown: unknown samples add nothing, not even to the count.
    weight : Tensor, shape (b,), optional
        Each sample's weight: the loss is then the weighted mean over the known samples.

    Returns
    -------
    Tensor, scalar
        Zero (still attached to the graph) when no sample in the batch has a known gender.
    """
    known = gender != UNKNOWN_GENDER
    if not known.any():
        return gender_logits.sum() * 0.0
    if weight is None:
        return F.cross_entropy(gender_logits[known], gender[known])
    losses = F.cross_entropy(gender_logits[known], gender[known], reduction="none")
    return (losses * weight[known]).sum() / weight[known].sum()


def position_loss(position_logits: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over age positions (Eq. 7); logits (b, n), positions (b,) int64, -1 for a
    sample without an age (left out)."""
    if not (position >= 0).any():
        return position_logits.sum() * 0.0
    return F.cross_entropy(position_logits, position, ignore_index=-1)


def variance_loss(age_probs: torch.Tensor, age_grid: torch.Tensor) -> torch.Tensor:
    """Mean variance (years squared) of the predicted age distributions, (b, n_ages) over the
    ages `age_grid`: the variance term of the mean-variance loss (Pan et al., CVPR 2018)."""
    mean = age_probs @ age_grid
    return (age_probs * (age_grid[None, :] - mean[:, None]) ** 2).sum(dim=1).mean()


def distribution_loss(age_probs: torch.Tensor, age_grid: torch.Tensor, age: torch.Tensor, sigma: float) -> torch.Tensor:
    """Label distribution learning (DLDL, Gao et al. 2017): cross-entropy of the predicted
    age distribution to a Gaussian of width `sigma` years around each true age."""
    known = ~torch.isnan(age)
    if not known.any():
        return age_probs.sum() * 0.0
    target = torch.softmax(-0.5 * ((age_grid[None, :] - age[known, None]) / sigma) ** 2, dim=1)
    return -(target * torch.log(age_probs[known].clamp_min(1e-12))).sum(dim=1).mean()


def joint_loss(
    outputs: dict[str, torch.Tensor],
    age: torch.Tensor,
    gender: torch.Tensor,
    position: torch.Tensor,
    *,
    lam: float = 1.0,
    mu: float = 1.0,
    variance_weight: float = 0.0,
    distribution_weight: float = 0.0,
    distribution_sigma: float = 2.0,
    age_grid: torch.Tensor | None = None,
    gender_sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss L_age + lam * L_gender + mu * L_position (Eq. 8), plus, where their weights
    are not 0, the variance term of the mean-variance loss (`variance_loss`) and the label
    distribution loss (`distribution_loss`) over the ages `age_grid`, which sharpen the EVR
    distribution (the L1 age loss is the mean term).

    Terms whose head is missing from ``outputs`` (no gender head; RAPL off or its first
    epoch) are left out.

    Parameters
    ----------
    outputs : dict of Tensor
        What `AgeGenderNet.forward` returned for the batch.
    age : Tensor, shape (b,)
        True ages (clipped to the model's range), NaN for unknown.
    gender : Tensor of int64, shape (b,)
        True gender, -1 for unknown.
    position : Tensor of int64, shape (b,)
        True age positions, -1 for unknown.
    gender_sample_weights : Tensor, shape (b,), optional
        Weights of the samples in the gender loss (`gender_loss`).

    Returns
    -------
    total : Tensor, scalar
        The loss to back-propagate.
    parts : dict of float
        ``age``, and ``gender`` / ``position`` when computed, for logging.
    """
    total = age_loss(outputs["age"], age)
    parts = {"age": total.item()}
    if "gender_logits" in outputs:
        term = gender_loss(outputs["gender_logits"], gender, gender_sample_weights)
        total = total + lam * term
        parts["gender"] = term.item()
    if "position_logits" in outputs:
        term = position_loss(outputs["position_logits"], position)
        total = total + mu * term
        parts["position"] = term.item()
    if variance_weight:
        term = variance_loss(outputs["age_probs"], age_grid)
        total = total + variance_weight * term
        parts["variance"] = term.item()
    if distribution_weight:
        term = distribution_loss(outputs["age_probs"], age_grid, age, distribution_sigma)
        total = total + distribution_weight * term
        parts["distribution"] = term.item()
    return total, parts
