"""Export trained heads to ONNX and write a model directory that `agestimate.heads.model` loads."""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from agestimate.heads.model import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAMES, write_card

from .fit import FittedHeads
from .heads import AgeGenderNet

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


class _InferenceGraph(nn.Module):
    """A trained `AgeGenderNet` in eval mode, rewritten as fewer, larger operations.

    The same numbers as the network (the export test checks it), computed faster:

    - the input standardisation is folded into the first linear layer;
    - Eq. 6 and FC(n -> 1) scale the channels of F by a constant once R is frozen, so they
      fold into the position head, which then is one linear layer like the others;
    - the age, gender and position heads run as one matrix product.

    Outputs: ``age_probs`` (N, n_ages), ``age`` (N,) clipped to 0..max_age, ``gender_probs``
    (N, 2) and ``position_probs`` (N, n). Without a gender head ``gender_probs`` is a constant
    0.5 (model.json says ``use_gender: false``); without RAPL ``position_probs`` is the age
    distribution itself, over the ages 0..max_age. Every model thus has the same outputs and
    the loader never guesses what a file contains.
    """

    @torch.no_grad()
    def __init__(self, net: AgeGenderNet):
        super().__init__()
        self.regression, self.use_gender, self.use_rapl = net.regression, net.use_gender, net.use_rapl
        self.max_age = net.max_age
        self.register_buffer("age_grid", net.age_grid.clone())
        self.projection = nn.Linear(net.projection.in_features, net.projection.out_features)
        self.projection.weight.copy_(net.projection.weight / net.feature_std)
        self.projection.bias.copy_(net.projection.bias - self.projection.weight @ net.feature_mean)
        self.layers = copy.deepcopy(net.layers)

        weights, biases = [net.age_head.weight], [net.age_head.bias]
        if net.use_gender:
            weights.append(net.gender_head.weight)
            biases.append(net.gender_head.bias)
        if net.use_rapl:
            scale, shift = net.position_channel_scale(), net.age_summary.bias
            weights.append(net.position_head.weight * scale)
            biases.append(net.position_head.bias + shift * net.position_head.weight.sum(dim=1))
        self.split_sizes = [len(w) for w in weights]
        self.heads = nn.Linear(net.projection.out_features, sum(self.split_sizes))
        self.heads.weight.copy_(torch.cat(weights))
        self.heads.bias.copy_(torch.cat(biases))

    def forward(self, features: torch.Tensor):
        hidden = self.layers(self.projection(features))
        head_outputs = self.heads(hidden).split(self.split_sizes, dim=1)
        if self.regression == "evr":
            age_probs = torch.softmax(head_outputs[0], dim=-1)
            age = (age_probs @ self.age_grid[:, None]).squeeze(1)  # ONNX Runtime is 4x slower on matrix @ vector
        else:
            age = head_outputs[0][:, 0].clamp(0, self.max_age)
            age_probs = torch.relu(1 - (self.age_grid - age[:, None]).abs())
        if self.use_gender:
            gender_probs = torch.softmax(head_outputs[1], dim=-1)
        else:
            gender_probs = torch.full_like(age_probs[:, :2], 0.5)
        position_probs = torch.softmax(head_outputs[-1], dim=-1) if self.use_rapl else age_probs
        return age_probs, age, gender_probs, position_probs


def position_ages_of(fitted: FittedHeads) -> list[float]:
    """Ages of the exported ``position_probs`` columns: RAPL positions, or 0..max_age without RAPL."""
    ages = fitted.position_ages if fitted.options.use_rapl else fitted.age_labels
    return [float(a) for a in ages]


def export_onnx(fitted: FittedHeads, path) -> Path:
    """Write the heads as an ONNX graph (opset 17, any batch size).

    The input standardisation and the reference map R are constants of the graph.

    Parameters
    ----------
    fitted : FittedHeads
        A result of `fit_heads`.
    path : str or Path
        Where to write the ``.onnx`` file.

    Returns
    -------
    Path
        ``path``. The graph takes ``features`` (N, d) float32 and returns ``age_probs``
        (N, max_age + 1), ``age`` (N,), ``gender_probs`` (N, 2) as [male, female] and
        ``position_probs`` (N, n_positions).
    """
    path = Path(path)
    net = fitted.model.cpu().eval()
    if net.use_rapl and not net.references_ready:
        raise ValueError("the RAPL head has no reference map R; train for at least 2 epochs")
    write_onnx(_InferenceGraph(net).eval(), torch.zeros(2, fitted.input_dim), path, [INPUT_NAME], list(OUTPUT_NAMES))
    return path


def write_onnx(module: nn.Module, example: torch.Tensor, path, input_names: list[str], output_names: list[str]) -> None:
    """Export `module` (eval mode) to ONNX at opset `ONNX_OPSET`, every input and output with a
    dynamic first (batch) axis."""
    with warnings.catch_warnings():
        # The torch.export-based exporter needs onnxscript; the TorchScript one is enough for these graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
                          opset_version=ONNX_OPSET, dynamo=False)
    logger.info("wrote %s", path)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plain_json(value):
    """NumPy scalars and arrays in a card, as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"model card value {value!r} of type {type(value).__name__} is not JSON serialisable")


def save_model_dir(fitted: FittedHeads, out_dir, *, card: dict | None = None) -> Path:
    """Write ``heads.onnx`` and ``model.json`` into ``out_dir`` (created if missing).

    Parameters
    ----------
    fitted : FittedHeads
        A result of `fit_heads`.
    out_dir : str or Path
        Target directory.
    card : dict, optional
        Free-form model card (data set, split, metrics, ...). The fields this function
        writes (``format_version``, ``input_dim``, ``max_age``, ``position_ages``,
        ``options``, ``best_epoch``, ``history``, ``versions``, ``onnx_file``) take
        precedence over keys of the same name in ``card``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(fitted, out_dir / "heads.onnx")
    written = {
        "format_version": FORMAT_VERSION,
        "onnx_file": "heads.onnx",
        "input_dim": fitted.input_dim,
        "max_age": fitted.options.max_age,
        "position_ages": position_ages_of(fitted),
        "options": dataclasses.asdict(fitted.options),
        "best_epoch": fitted.best_epoch,
        "history": fitted.history,
        "versions": {name: _version(name) for name in ("torch", "onnx", "onnxruntime", "agestimate")},
    }
    overridden = sorted(set(card or {}) & set(written))
    if overridden:
        logger.warning("model card keys %s are replaced by the values of the trained model", overridden)
    model_card = {**(card or {}), **written}
    write_card(out_dir, model_card, default=_plain_json)
    return out_dir
