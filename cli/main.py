"""The `agestimate` command: thin click commands over the public functions."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from agestimate.errors import AgestimateError
from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR, Descriptor
from agestimate.io.images import DEFAULT_MAX_PIXELS
from agestimate.runtime.sessions import BACKENDS, PRECISIONS
from agestimate.store.index import INDEX_KINDS


def _fail_cleanly(function):
    """Turn the library's own errors into a one-line message and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AgestimateError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


def _check_descriptor(context, parameter, value):
    try:
        return Descriptor.parse(value).name
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def runtime_options(function):
    """--backend and --precision: what runs the face models (see `agestimate.runtime.sessions`)."""
    function = click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
                            help="OpenVINO precision: auto is bf16 where the CPU has it, else int8.")(function)
    return click.option("--backend", default=None, type=click.Choice(BACKENDS),
                        help="Runtime of the face models (default: onnxruntime when it offers CUDA, else openvino).")(function)


def engine_options(function):
    """--engine, --ray-address and --actors: where the work runs (see `agestimate.apps.distributed`)."""
    function = click.option("--actors", type=int, default=None,
                            help="Ray: actors, each holding one loaded model (default: one per GPU, else one per CPU).")(function)
    function = click.option("--ray-address", default=None,
                            help="Ray: the cluster to join, e.g. auto or ray://head:10001 (default: RAY_ADDRESS, else the Ray "
                                 "`ray start` started on this machine, else a new local Ray).")(function)
    return click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
                        help="local: this process; ray: a pool of Ray actors (needs the ray extra).")(function)


def _engine_arguments(engine, ray_address, actors) -> dict:
    if engine == "ray":
        return {"ray_address": ray_address, "actors": actors}
    if ray_address or actors:
        raise click.UsageError("--ray-address and --actors apply to --engine ray")
    return {}


@click.group()
@click.option("-v", "--verbose", count=True, help="More log messages on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Age and gender estimation from face photos.

    Exit codes: 0 done (files that could not be read are listed, not fatal); 1 a fatal error
    (missing or tampered weights, a store made by another model); 2 a usage error.
    """
    logging.basicConfig(level=logging.WARNING - 10 * verbose, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store folder (created if needed).")
@click.option("--labels", default=None, help="utkface | fgnet (from file names) | PATH.csv (path, age, gender, ...).")
@click.option("--batch-size", default=64, show_default=True, help="Faces embedded per ONNX Runtime call.")
@click.option("--crops", is_flag=True, help="Inputs are tight face crops: align undetected ones with a template.")
@click.option("--max-faces", type=int, default=None, help="Keep at most N faces per image, largest first.")
@click.option("--det-size", default=640, show_default=True, help="Largest detector input side.")
@click.option("--det-thresh", default=0.5, show_default=True, help="Detection score threshold.")
@click.option("--descriptor", default=DEFAULT_DESCRIPTOR, show_default=True, callback=_check_descriptor,
              help="Features stored beside each embedding: blocks emb, gap473, gap505, gap509, grid509, adapted (the "
                   "fine-tuned task branch) joined by +, optionally +flip.")
@click.option("--threads", type=int, default=None, help="Inference threads per model (default: the runtime's choice).")
@runtime_options
@click.option("--index", default=None, type=click.Choice(INDEX_KINDS),
              help="Search index of the store: flat (exact), ivf (approximate) or auto (ivf from 200,000 faces); "
                   "kept by the store (default: its current choice, auto for a new store).")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_fail_cleanly
def embed(sources, store, labels, batch_size, crops, max_faces, det_size, det_thresh, descriptor, threads, backend,
          precision, index, engine, ray_address, actors, as_json):
    """Embed every face in SOURCES (files, folders, globs) into the store; resumable. Labels
    apply to new and already stored images alike."""
    engine_arguments = _engine_arguments(engine, ray_address, actors)
    if engine == "ray":
        from agestimate.apps.distributed import embed as embed_sources
    else:
        from agestimate.store.embedding import embed as embed_sources

    summary = embed_sources(
        sources, store=store, labels=labels, batch_size=batch_size, crops=crops, max_faces=max_faces,
        det_size=det_size, det_thresh=det_thresh, descriptor=descriptor, threads=threads, backend=backend,
        precision=precision, show_progress=True, index=index, **engine_arguments,
    )
    for pattern in summary.unmatched:
        click.echo(f"warning: no file matches {pattern}", err=True)
    for _, reason in summary.label_problems + summary.label_conflicts:  # each reason names its file
        click.echo(f"  {reason}", err=True)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    numbers = summary.as_dict()
    click.echo(
        f"{numbers['files']} files: {numbers['embedded']} embedded, {numbers['no_face']} without a face, "
        f"{numbers['already_stored']} already in the store, {numbers['errors']} errors, "
        f"{numbers['already_failed']} failed before (see `agestimate info`), "
        f"{numbers['ignored_not_images']} non-image files ignored"
    )
    click.echo(
        f"{numbers['faces']} faces {numbers['faces_by_method']} in {numbers['seconds']} s: "
        f"{numbers['images_per_second']} images/s, {numbers['faces_per_second']} faces/s"
    )
    for kind, count in sorted(summary.errors_by_kind.items()):
        click.echo(f"errors, {kind}: {count}")
    for path, reason in summary.errors:
        click.echo(f"  {path}: {reason}", err=True)
    if labels is not None:
        click.echo(f"labels applied to {numbers['labelled']} files (new and already stored)")
    if summary.label_problems:
        click.echo(f"label problems: {len(summary.label_problems)} (files without a label, listed on stderr)")
    if summary.label_conflicts:
        click.echo(f"label conflicts: {len(summary.label_conflicts)} (a new label replaced a different one of the same "
                   f"content, listed on stderr)")


@cli.command()
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--report", default=None, type=click.Path(file_okay=False),
              help="Write a data hygiene report here: histograms, duplicates, split leakage, label outliers.")
@click.option("--threshold", default=0.9, show_default=True, help="Cosine of identity embeddings for near-duplicates.")
@click.option("--prune", is_flag=True,
              help="First forget files no longer on disk and images no file points at, with their faces and labels.")
@_fail_cleanly
def info(store, as_json, report, threshold, prune):
    """Show what a store holds: images, faces, labels per split, errors by reason."""
    from agestimate.store.store import EmbeddingStore

    if prune:
        with EmbeddingStore(store) as db:
            pruned = db.prune()
        click.echo(f"pruned: {pruned['missing_files']} files no longer on disk, {pruned['images']} images no file "
                   f"points at ({pruned['faces']} faces, {pruned['labels']} labels)", err=True)

    if report:
        from agestimate.evaluation.hygiene import hygiene_report

        summary = hygiene_report(store, report, threshold=threshold)
        click.echo(json.dumps(summary, indent=2) if as_json else
                   f"report written to {report}: {summary['near_duplicate_pairs']} near-duplicate pairs, "
                   f"{summary['near_duplicate_pairs_across_train_and_val_test']} across train and val/test, "
                   f"{summary['label_outliers']} label outliers")
        return
    with EmbeddingStore(store) as db:
        summary = db.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")


def _head_options(epochs, seed, no_rapl, no_gender, dropout, child_gender_weight):
    try:
        from agestimate.training.fit import HeadOptions
    except ImportError as error:  # torch is a training-only extra
        raise click.ClickException(f"training needs the train extra: pip install 'agestimate[train]' ({error})") from error

    changes = {"seed": seed, "use_rapl": not no_rapl, "use_gender": not no_gender}
    if epochs is not None:
        changes["epochs"] = epochs
    if dropout is not None:
        changes["dropout"] = dropout
    if child_gender_weight is not None:
        changes["child_gender_weight"] = child_gender_weight
    try:
        return HeadOptions(**changes)
    except ValueError as error:  # e.g. RAPL with --epochs 1
        raise click.UsageError(f"{error}{'; or train without RAPL: --no-rapl' if 'RAPL' in str(error) else ''}") from error


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        shown = "-" if value is None else f"{value:.4f}" if isinstance(value, float) else value
        click.echo(f"{key:24s} {shown}")


_training_options = [
    click.option("--descriptor", default=None, help="Features to train on (default: the store's descriptor)."),
    click.option("--epochs", type=int, default=None, help="Training epochs (default: 30)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
                 help="Dropout in the heads (default: 0.3; the shipped default model, 4096 features, uses 0.5)."),
    click.option("--child-gender-weight", type=click.FloatRange(0, min_open=True), default=None,
                 help="Weight of faces under 13 in the gender loss (default: 1; the shipped default model uses 3)."),
    click.option("--no-rapl", is_flag=True, help="Train without the RAPL position head."),
    click.option("--no-gender", is_flag=True, help="Train without the gender head."),
    click.option("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available)."),
    click.option("--augment", "augment_with", default="none", show_default=True, type=click.Choice(["none", "mixup", "cae"]),
                 help="Synthesise tail-age (50+) training samples: plain interpolation, or in an autoencoder's latent space."),
    click.option("--repeats", default=None, callback=lambda context, parameter, value: _parse_repeats(value),
                 help="With several --store: how often each store's training faces are seen per epoch, e.g. 1,4."),
]


def _check_repeats(repeats, stores) -> None:
    if repeats is not None and (len(repeats) != len(stores) or min(repeats) < 1):
        raise click.BadParameter(f"one count of 1 or more per --store ({len(stores)}), got {repeats}", param_hint="--repeats")


def _parse_repeats(value):
    if value is None:
        return None
    try:
        return [int(n) for n in value.split(",")]
    except ValueError as error:
        raise click.BadParameter(f"comma-separated whole numbers, one per --store, got {value!r}") from error


def training_options(function):
    for option in reversed(_training_options):
        function = option(function)
    return function


@cli.command()
@click.option("--store", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Store of labelled faces; repeat to train on several (e.g. UTKFace and FG-NET).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write (ONNX + model.json).")
@training_options
@click.option("--val-fraction", default=0.1, show_default=True,
              help="Faces without a split label: this fraction of their people is held out to choose the epoch.")
@click.option("--refit", is_flag=True, help="Then train again for the chosen epochs with those people added.")
@click.option("--exclude-label-outliers", is_flag=True, help="Leave out training faces whose age is far from their neighbours'.")
@click.option("--exclude-near-duplicates", type=float, default=None,
              help="Leave out training faces with a near-duplicate (identity cosine >= this) in val or test.")
@click.option("--json", "as_json", is_flag=True, help="Print the model card's metrics as JSON.")
@_fail_cleanly
def train(store, out, descriptor, epochs, seed, dropout, child_gender_weight, no_rapl, no_gender, device, augment_with,
          repeats, val_fraction, refit, exclude_label_outliers, exclude_near_duplicates, as_json):
    """Train the age and gender heads (EVR + gender + RAPL) on one store or several; needs the train extra."""
    _check_repeats(repeats, store)
    options = _head_options(epochs, seed, no_rapl, no_gender, dropout, child_gender_weight)
    from agestimate.training.protocols import train as train_heads

    card = train_heads(list(store), out, descriptor=descriptor, options=options, device=device, progress=True,
                       command=" ".join(sys.argv), augment_with=augment_with, val_fraction=val_fraction, refit=refit,
                       exclude_label_outliers=exclude_label_outliers, exclude_near_duplicates=exclude_near_duplicates,
                       repeats=repeats)
    click.echo(f"model written to {out} ({card['descriptor']}, {card['training_seconds']} s)", err=True)
    by_source = card.get("metrics_by_source", {"": card["metrics"]})
    _print_metrics({"_".join(filter(None, [Path(source).name, split, key])): value for source, splits in by_source.items()
                    for split, metrics in splits.items() for key, value in metrics.items() if split != "train"}, as_json)


@cli.command("eval")
@click.option("--store", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Store with labelled faces; lopo and folds take several (the people are in one).")
@click.option("--model", default=None, type=click.Path(file_okay=False),
              help="Model folder written by `train`, or a shipped model: default, frozen, flip, embedding.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--protocol", default="split", show_default=True, type=click.Choice(["split", "lopo", "folds"]),
              help="split: evaluate --model on --split; lopo: train per person left out; folds: train per group of "
                   "people left out, on the other stores' train split too (both need person labels).")
@click.option("--folds", default=5, show_default=True, help="Number of person folds (--protocol folds).")
@click.option("--shuffles", default=1, show_default=True, type=click.IntRange(min=1),
              help="Repeat lopo or folds with the seeds --seed, --seed + 1, ...; metrics over all their predictions.")
@training_options
@click.option("--json", "as_json", is_flag=True, help="Print a flat JSON object.")
@click.option("--report", default=None, type=click.Path(file_okay=False), help="Write report.md, metrics.json and plots here.")
@click.option("--exclude-near-duplicates", type=float, default=None,
              help="Also measure without the faces that have a near-duplicate (identity cosine >= this) in the train split.")
@_fail_cleanly
def evaluate(store, model, split, protocol, folds, shuffles, descriptor, epochs, seed, dropout, child_gender_weight, no_rapl,
             no_gender, device, augment_with, repeats, as_json, report, exclude_near_duplicates):
    """Measure a model on a store: MAE, CS@5, 1CoA, gender accuracy, MAE and bias per decade, per-group MAE."""
    if protocol == "split" and (descriptor or epochs or dropout is not None or child_gender_weight is not None
                                or no_rapl or no_gender or device or augment_with != "none" or repeats or shuffles != 1):
        raise click.UsageError("--descriptor, --epochs, --dropout, --child-gender-weight, --no-rapl, --no-gender, --device, "
                               "--augment, --repeats and --shuffles apply to --protocol lopo and folds only")
    if protocol in ("lopo", "folds") and (model or exclude_near_duplicates is not None or split != "test"):
        raise click.UsageError("--model, --split and --exclude-near-duplicates apply to --protocol split only")
    if protocol in ("lopo", "folds"):
        _check_repeats(repeats, store)
        options = _head_options(epochs, seed, no_rapl, no_gender, dropout, child_gender_weight)
        from agestimate.training.protocols import person_folds

        result = person_folds(list(store), folds=None if protocol == "lopo" else folds, descriptor=descriptor,
                              options=options, device=device, progress=True, augment_with=augment_with, repeats=repeats,
                              shuffles=shuffles)
    else:
        if model is None:
            raise click.UsageError("--model is required unless --protocol lopo or folds")
        if len(store) > 1:
            raise click.UsageError("--protocol split measures one --store")
        store = store[0]
        from agestimate.estimator import model_folder
        from agestimate.evaluation.measure import evaluate as evaluate_model

        result = evaluate_model(model_folder(model), store, split=split, exclude_near_duplicates=exclude_near_duplicates)
    _print_metrics(result.metrics, as_json)
    if report:
        from agestimate.evaluation.report import write_report

        write_report(result, report, title=f"agestimate eval: {', '.join(store) if protocol != 'split' else store}",
                     command=" ".join(sys.argv))


@cli.command()
@click.option("--model", required=True, type=click.Path(file_okay=False, exists=True),
              help="Model folder; its model.json receives the calibration.")
@click.option("--store", "stores", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Store with labelled faces the model was not trained on; repeat to pool stores.")
@click.option("--split", "splits", multiple=True,
              help="Split of the faces: one for every --store, or one per --store in order (default: val; all: every face).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
@_fail_cleanly
def calibrate(model, stores, splits, as_json):
    """Fit the model's age intervals (conformal) and gender temperature on held-out labelled faces.
    `train` already does it on the val split; use this for older models or your own photos."""
    from agestimate.evaluation.calibrate import calibrate as calibrate_model

    splits = splits or ("val",)
    if len(splits) not in (1, len(stores)):
        raise click.UsageError(f"give one --split, or one per --store ({len(stores)}), not {len(splits)}")
    sources = list(zip(stores, splits if len(splits) > 1 else splits * len(stores)))
    calibration = calibrate_model(model, sources)
    if as_json:
        click.echo(json.dumps(calibration.to_dict(), indent=2))
        return
    temperature = "none (no gender head)" if calibration.gender is None else calibration.gender.describe()
    click.echo(f"calibrated {model} on {calibration.source['faces']} faces: age groups split at predicted ages "
               f"{list(calibration.age.group_edges)} ({[len(scores) for scores in calibration.age.scores]} faces), "
               f"gender temperature {temperature}")


@cli.command()
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store with labelled train/val/test splits.")
@click.option("--descriptor", default=None, help="Features to train on (default: the store's descriptor).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: 30).")
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
@_fail_cleanly
def ablation(store, descriptor, seeds, epochs, device, as_json):
    """The RAPL paper's Table 3 on a store: FC, EVR, EVR+GP, EVR+RAPL, EVR+RAPL+GP over seeds."""
    options = _head_options(epochs, 0, False, False, None, None)
    from agestimate.training.protocols import ablation as run_ablation

    rows = run_ablation(store, descriptor=descriptor, seeds=[int(s) for s in seeds.split(",")], options=options,
                        device=device, progress=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("| variant | MAE | CS@5 | gender acc. | MAE 60+ | s/run |\n|---|---|---|---|---|---|")
    for row in rows:
        cell = lambda key, scale=1: "-" if row[key] is None else f"{row[key] * scale:.2f} ± {row[key + '_std'] * scale:.2f}"  # noqa: E731
        click.echo(f"| {row['variant']} | {cell('mae')} | {cell('cs5', 100)} | {cell('gender_accuracy', 100)} | "
                   f"{cell('mae_60plus')} | {row['seconds']:.0f} |")


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--model", default=None, type=click.Path(file_okay=False),
              help="Model folder, or a shipped model: default (one recogniser pass), flip (two, mirrored), embedding.")
@click.option("--out", default=None, type=click.Path(), help="FILE.csv, FILE.jsonl or FOLDER.parquet (default: CSV on stdout); "
              "an existing one is resumed: its images are skipped.")
@click.option("--annotate", default=None, type=click.Path(file_okay=False),
              help="Write annotated copies into this folder, each input under its own path.")
@click.option("--recursive", is_flag=True, help="Walk folders recursively (and ** in globs).")
@click.option("--max-faces", type=int, default=None, help="At most N faces per image, largest first.")
@click.option("--crops", is_flag=True, help="Inputs are tight face crops (see `embed --crops`).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--webcam", type=int, default=None, help="Read this camera (index) instead of SOURCES.")
@click.option("--every", default=1, show_default=True, help="Videos: analyse every N-th frame, carry faces over between.")
@click.option("--max-frames", type=int, default=None, help="Videos: stop after N frames.")
@click.option("--interval", default=0.8, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Level of the age interval (columns age_low, age_high).")
@click.option("--neighbours", "neighbours_store", default=None, type=click.Path(file_okay=False, exists=True),
              help="Store whose nearest labelled faces are listed per face (column neighbours).")
@click.option("--k", default=5, show_default=True, type=click.IntRange(min=1), help="Neighbours per face.")
@runtime_options
@engine_options
@_fail_cleanly
def predict(sources, model, out, annotate, recursive, max_faces, crops, batch_size, threads, webcam, every, max_frames,
            interval, neighbours_store, k, backend, precision, engine, ray_address, actors):
    """Age and gender of every face in SOURCES (files, folders, globs, videos): one row per face,
    and one row with the reason for each image or frame with no face or an error. Videos (.mp4,
    .avi, ...) and --webcam give one row per face per frame, faces tracked and smoothed along
    their track (column track), and an annotated .avi with --annotate."""
    from agestimate.apps.run import EngineOptionError
    from agestimate.apps.run import predict as predict_run
    from agestimate.io.predictions import check_output

    if not sources and webcam is None:
        raise click.UsageError("give SOURCES or --webcam")
    try:
        check_output(out)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--out") from error
    _engine_arguments(engine, ray_address, actors)  # refuses Ray options without --engine ray
    try:
        predict_run(sources, out, engine=engine, model=model, recursive=recursive, webcam=webcam, batch_size=batch_size,
                    every=every, max_frames=max_frames, annotate=annotate, neighbours=neighbours_store, k=k,
                    interval=interval, max_faces=max_faces, crops=crops, threads=threads, backend=backend,
                    precision=precision, ray_address=ray_address, actors=actors, show_progress=engine == "local",
                    report=lambda line: click.echo(line, err=True))
    except EngineOptionError as error:
        raise click.UsageError(str(error)) from error


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True)
@click.option("--model", default=None, type=click.Path(file_okay=False),
              help="Model folder, or a shipped model: default, flip, embedding.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes, each with its own model and queue.")
@click.option("--max-faces", type=int, default=None, help="At most N faces per image, largest first.")
@click.option("--threads", type=int, default=None, help="Inference threads per worker (default: cores / workers).")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Larger uploads are answered 413.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="Larger images are answered 413, before they are decoded.")
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Requests in work per worker; more are answered 503 at once.")
@runtime_options
@_fail_cleanly
def serve(host, port, model, workers, max_faces, threads, max_upload_mb, max_pixels, queue_size, backend, precision):
    """Serve the HTTP API (POST /v1/predict, /v1/annotate; docs at /docs) and a web page at /;
    needs the serve extra."""
    try:
        from agestimate.apps.serve import serve as run_server
    except ImportError as error:
        raise click.ClickException(f"serving needs the serve extra: pip install 'agestimate[serve]' ({error})") from error

    run_server(model, host=host, port=port, workers=workers, backend=backend, precision=precision, threads=threads,
               max_faces=max_faces, max_upload_mb=max_upload_mb, max_pixels=max_pixels, queue_size=queue_size)
