"""Age positions (RAPL Fig. 2) and reference selection (RAPL Algorithm 1)."""

from __future__ import annotations

import numpy as np
import torch


def encode_age_positions(ages) -> tuple[np.ndarray, np.ndarray]:
    """Relative age positions: the index of each age among the distinct ages present.

    As in Fig. 2 of the RAPL paper, the training ages ``[15, 16, 17, ..., 70, 72]`` get the
    positions ``[0, 1, 2, ..., 55, 56]``; ages absent from the data get no position.
    Fractional ages are rounded to whole years first.

    Parameters
    ----------
    ages : array-like, shape (K,)
        Training ages in years, already clipped to the model's age range.

    Returns
    -------
    position_ages : ndarray of float32, shape (n,)
        The distinct ages, ascending; ``position_ages[j]`` is the age of position j.
    positions : ndarray of int64, shape (K,)
        The position of each sample's age.
    """
    rounded = np.rint(np.asarray(ages, dtype=np.float64))
    position_ages, positions = np.unique(rounded, return_inverse=True)
    return position_ages.astype(np.float32), positions.astype(np.int64)


def select_references(
    abs_errors: torch.Tensor, positions: torch.Tensor, features: torch.Tensor, *, n_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick, for every age position, the training sample with the smallest age error (Algorithm 1).

    Parameters
    ----------
    abs_errors : Tensor, shape (K,)
        ``|a - a_hat|`` of every training sample, from the predictions saved in the previous epoch.
    positions : Tensor of int64, shape (K,)
        Age position of every training sample (see `encode_age_positions`).
    features : Tensor, shape (K, c)
        Trunk features F of every training sample, saved in the previous epoch.
    n_positions : int
        Number of age positions n; every position must have at least one sample.

    Returns
    -------
    references : Tensor, shape (n, c)
        Reference feature map R: row j holds the features of position j's reference.
    indices : Tensor of int64, shape (n,)
        The chosen sample for each position; ties go to the lowest index, like ``argmin``.
    """
    # Sort by error, then stably by position: each position's first entry is its min-error sample.
    by_error = torch.argsort(abs_errors, stable=True)
    order = by_error[torch.argsort(positions[by_error], stable=True)]
    sorted_positions = positions[order]
    is_first = torch.ones_like(sorted_positions, dtype=torch.bool)
    is_first[1:] = sorted_positions[1:] != sorted_positions[:-1]
    indices = order[is_first]
    if indices.numel() != n_positions:
        raise ValueError(f"every one of the {n_positions} age positions needs a sample, found {indices.numel()}")
    return features[indices], indices
