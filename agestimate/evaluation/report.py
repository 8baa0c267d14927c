"""Evaluation reports: report.md, metrics.json and PNG plots (needs matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agestimate.errors import AgestimateError
from agestimate.evaluation.measure import Evaluation
from agestimate.evaluation.metrics import DECADE_KEYS, age_group, age_group_labels, decade_keys, reliability_bins


def format_table(metrics: dict) -> str:
    """The headline numbers as a two-column Markdown table."""
    rows = ["| measure | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        rows.append(f"| {key} | {'-' if value is None else value} |")
    return "\n".join(rows)


def decade_table(evaluation: Evaluation) -> str:
    """Faces, MAE, bias (mean signed error, predicted - true) and gender accuracy per decade of
    true age, as Markdown."""
    metrics = evaluation.metrics
    ages = evaluation.records.age[~np.isnan(evaluation.records.age)]
    counts = np.bincount(age_group(ages, "bins10"), minlength=len(age_group_labels("bins10")))
    rows = ["| true age | faces | MAE | bias | gender % |", "|---|---|---|---|---|"]
    for count, label, mae_key, bias_key, gender_key in zip(counts, age_group_labels("bins10"), DECADE_KEYS,
                                                            decade_keys("bias"), decade_keys("gender_accuracy")):
        if metrics.get(mae_key) is not None:
            gender = "-" if metrics.get(gender_key) is None else f"{100 * metrics[gender_key]:.1f}"
            rows.append(f"| {label} | {count} | {metrics[mae_key]:.2f} | {metrics[bias_key]:+.2f} | {gender} |")
    return "\n".join(rows)


def _figure(size, rows: int = 1, columns: int = 1):
    """A figure and its axes, drawn on the figure's own canvas: the caller's matplotlib backend
    and pyplot's figures stay as they are."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    return figure, figure.subplots(rows, columns)


def write_report(evaluation: Evaluation, folder, *, title: str, command: str) -> Path:
    """Write report.md, metrics.json and PNG plots into `folder`: four of the point estimates and,
    for a calibrated model, interval coverage per decade and the gender reliability diagram."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise AgestimateError("reports need matplotlib: pip install 'agestimate[train]'") from error

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aged = ~np.isnan(evaluation.records.age)  # the age plots show the faces with an age label
    true, predicted = evaluation.records.age[aged], evaluation.predicted_age[aged]
    (folder / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")

    figure, axes = _figure((5, 5))
    axes.scatter(true, predicted, s=4, alpha=0.4)
    axes.plot([0, 100], [0, 100], color="black", linewidth=1)
    axes.set(xlabel="true age", ylabel="predicted age", title="predicted vs true age")
    figure.savefig(folder / "predicted_vs_true.png", dpi=100, bbox_inches="tight")

    figure, axes = _figure((7, 4))
    ages = np.clip(true.astype(int), 0, 100)
    errors = np.abs(predicted - true)
    present = np.unique(ages)
    axes.bar(present, [errors[ages == age].mean() for age in present], width=1.0)
    axes.set(xlabel="true age", ylabel="mean absolute error", title="absolute error by true age")
    figure.savefig(folder / "error_by_age.png", dpi=100, bbox_inches="tight")

    labels = age_group_labels("adience8")
    matrix = np.zeros((len(labels), len(labels)), np.int64)  # rows: true group, columns: predicted group
    np.add.at(matrix, (age_group(true, "adience8"), age_group(predicted, "adience8")), 1)
    figure, axes = _figure((6, 5))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45)
    axes.set_yticks(range(len(labels)), labels)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7)
    axes.set(xlabel="predicted group", ylabel="true group", title="Adience-8 confusion matrix")
    figure.colorbar(image)
    figure.savefig(folder / "confusion_adience8.png", dpi=100, bbox_inches="tight")

    labels = age_group_labels("bins10")
    present = [i for i, key in enumerate(DECADE_KEYS) if evaluation.metrics.get(key) is not None]
    figure, (mae_axes, bias_axes) = _figure((12, 4), 1, 2)
    for axes, prefix, name in ((mae_axes, "mae", "MAE"), (bias_axes, "bias", "mean signed error (predicted - true)")):
        keys = decade_keys(prefix)
        values = [evaluation.metrics[keys[i]] for i in present]
        axes.bar([labels[i] for i in present], values)
        axes.set(xlabel="true age", ylabel=name, title=f"{name} per decade")
    bias_axes.axhline(0, color="black", linewidth=1)
    figure.savefig(folder / "mae_per_decade.png", dpi=100, bbox_inches="tight")
    plots = ["![predicted vs true](predicted_vs_true.png)", "![error by age](error_by_age.png)",
             "![Adience-8 confusion](confusion_adience8.png)", "![MAE and bias per decade](mae_per_decade.png)"]
    if evaluation.uncertainty is not None:
        plots += _uncertainty_plots(evaluation, folder)

    (folder / "report.md").write_text(
        f"# {title}\n\nCommand: `{command}`\n\n{format_table(evaluation.metrics)}\n\n{decade_table(evaluation)}\n\n"
        + "\n".join(plots) + "\n"
    )
    return folder


def _uncertainty_plots(evaluation: Evaluation, folder: Path) -> list[str]:
    """Coverage per decade of true age at each interval level, and the gender reliability diagram."""
    labels = age_group_labels("bins10")
    figure, axes = _figure((7, 4))
    for offset, level in enumerate(evaluation.uncertainty["intervals"]):
        tag = f"{round(100 * level):d}"
        keys = decade_keys(f"coverage_{tag}")
        shown = [(i, evaluation.metrics[key]) for i, key in enumerate(keys) if evaluation.metrics.get(key) is not None]
        axes.bar([i + 0.4 * offset - 0.2 for i, _ in shown], [value for _, value in shown], width=0.4, label=f"{tag}% interval")
        axes.axhline(level, linestyle="--", linewidth=1, color=f"C{offset}")
    axes.set_xticks(range(len(labels)), labels, rotation=45)
    axes.set(xlabel="true age", ylabel="coverage", ylim=(0, 1), title="interval coverage per decade (dashed: level)")
    axes.legend()
    figure.savefig(folder / "coverage_per_decade.png", dpi=100, bbox_inches="tight")
    plots = ["![coverage per decade](coverage_per_decade.png)"]

    known = (evaluation.records.gender >= 0) & (evaluation.predicted_gender >= 0)
    if known.any():
        rows = reliability_bins(evaluation.uncertainty["prob_female"][known], evaluation.records.gender[known])
        figure, axes = _figure((5, 5))
        axes.bar([(r["low"] + r["high"]) / 2 for r in rows], [r["accuracy"] for r in rows], width=1 / 30, alpha=0.7,
                 edgecolor="black", label="accuracy")
        axes.plot([0.5, 1], [0.5, 1], color="black", linewidth=1, label="perfect calibration")
        for row in rows:
            axes.annotate(str(row["count"]), ((row["low"] + row["high"]) / 2, row["accuracy"]), ha="center", va="bottom", fontsize=6)
        axes.set(xlabel="confidence (probability of the predicted gender)", ylabel="accuracy", xlim=(0.5, 1), ylim=(0, 1.05),
                 title=f"gender reliability, ECE {evaluation.metrics.get('gender_ece', float('nan')):.3f}")
        axes.legend(loc="upper left")
        figure.savefig(folder / "gender_reliability.png", dpi=100, bbox_inches="tight")
        plots.append("![gender reliability](gender_reliability.png)")
    return plots
