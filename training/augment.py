"""Tail-age augmentation in feature space: convex interpolation of pairs of rare-age samples,
either of the vectors themselves ("mixup") or of their codes in the latent space of a
convolutional autoencoder trained on the training features ("cae", after Kwon 2025), with the
age labels interpolated by the same weight and the shared gender kept.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

METHODS = ("none", "mixup", "cae")


class FeatureAutoencoder(nn.Module):
    """1-D convolutions over a standardised feature vector (d divisible by 16) to a small code."""

    def __init__(self, dim: int, latent: int = 64):
        super().__init__()
        if dim % 16:
            raise ValueError(f"feature dimension must be divisible by 16, got {dim}")
        self.dim = dim
        self.encoder = nn.Sequential(
            nn.Conv1d(1, 8, 9, stride=4, padding=4), nn.GELU(),
            nn.Conv1d(8, 16, 9, stride=4, padding=4), nn.GELU(),
            nn.Flatten(), nn.Linear(dim, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, dim), nn.Unflatten(1, (16, dim // 16)), nn.GELU(),
            nn.ConvTranspose1d(16, 8, 8, stride=4, padding=2), nn.GELU(),
            nn.ConvTranspose1d(8, 1, 8, stride=4, padding=2),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x[:, None, :])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[:, 0, :]


def reconstruction_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Squared error plus cosine distance: values and direction of the (standardised) features."""
    cosine = nn.functional.cosine_similarity(reconstructed, original, dim=1)
    return nn.functional.mse_loss(reconstructed, original) + (1 - cosine).mean()


class LatentInterpolator:
    """A `FeatureAutoencoder` fitted on training features, with their standardisation."""

    def __init__(self, X: np.ndarray, *, latent: int = 64, epochs: int = 15, seed: int = 0):
        torch.manual_seed(seed)
        self.mean, self.std = X.mean(axis=0), X.std(axis=0) + 1e-6
        self.model = FeatureAutoencoder(X.shape[1], latent)
        data = torch.from_numpy(((X - self.mean) / self.std).astype(np.float32))
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        shuffle = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            total = 0.0
            for batch in torch.randperm(len(data), generator=shuffle).split(256):
                loss = reconstruction_loss(self.model.decode(self.model.encode(data[batch])), data[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            logger.info("autoencoder epoch %d: loss %.4f", epoch + 1, total / len(data))
        self.model.eval()

    @torch.no_grad()
    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(((X - self.mean) / self.std).astype(np.float32))).numpy()

    @torch.no_grad()
    def decode(self, Z: np.ndarray) -> np.ndarray:
        return self.model.decode(torch.from_numpy(Z.astype(np.float32))).numpy() * self.std + self.mean

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(X))


def tail_pairs(age: np.ndarray, gender: np.ndarray, *, min_age: float = 50, bin_width: int = 5, window: float = 3,
               cap: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) and weights a to synthesise for 5-year bins from `min_age` up.

    Each such bin below the median count of all bins is brought up to that median, at most to
    `cap` times its real count; pairs share the gender and are at most `window` years apart.
    """
    rng = np.random.default_rng(seed)
    bins = (age // bin_width).astype(int)
    counts = np.bincount(bins)
    target = np.median(counts[counts > 0])
    first, second = [], []
    for b in range(int(min_age // bin_width), len(counts)):
        need = int(min(target, cap * counts[b]) - counts[b])
        members = np.flatnonzero(bins == b)
        for _ in range(max(need, 0)):
            i = rng.choice(members)
            partners = np.flatnonzero((gender == gender[i]) & (np.abs(age - age[i]) <= window))
            first.append(i)
            second.append(rng.choice(partners))  # i itself is always a partner
    first, second = np.array(first, int), np.array(second, int)
    return first, second, rng.uniform(0, 1, len(first)).astype(np.float32)


def augment(X: np.ndarray, age: np.ndarray, gender: np.ndarray, *, method: str, seed: int = 0,
            interpolator: LatentInterpolator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training data with synthetic tail-age samples appended (none for method "none")."""
    if method not in METHODS:
        raise ValueError(f"augment must be one of {METHODS}, got {method!r}")
    if method == "none":
        return X, age, gender
    i, j, a = tail_pairs(age, gender, seed=seed)
    if method == "mixup":
        synthetic = a[:, None] * X[i] + (1 - a[:, None]) * X[j]
    else:
        interpolator = interpolator or LatentInterpolator(X, seed=seed)
        codes = interpolator.encode(X)
        synthetic = interpolator.decode(a[:, None] * codes[i] + (1 - a[:, None]) * codes[j])
    logger.info("%s: %d synthetic samples for ages %.0f+", method, len(i), age[i].min() if len(i) else 0)
    return (np.concatenate([X, synthetic.astype(np.float32)]), np.concatenate([age, a * age[i] + (1 - a) * age[j]]),
            np.concatenate([gender, gender[i]]))
