"""The `agestimate` command: thin click commands over the public functions."""

from __future__ import annotations

import json
import logging

import click

from agestimate.errors import AgestimateError


def _fail_cleanly(function):
    """Turn the library's own errors into a one-line message and exit code 1."""

    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AgestimateError as error:
            raise click.ClickException(str(error)) from error

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


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
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads per model (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_fail_cleanly
def embed(sources, store, labels, batch_size, crops, max_faces, det_size, det_thresh, threads, as_json):
    """Embed every face in SOURCES (files and folders) into the store; resumable."""
    from agestimate.embedding import embed as embed_sources

    summary = embed_sources(
        sources, store=store, labels=labels, batch_size=batch_size, crops=crops, max_faces=max_faces,
        det_size=det_size, det_thresh=det_thresh, threads=threads, show_progress=True,
    )
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
    if summary.label_problems:
        click.echo(f"label problems: {len(summary.label_problems)} (files embedded without a label)")
        for path, reason in summary.label_problems:
            click.echo(f"  {reason}", err=True)
    if summary.label_conflicts:
        click.echo(f"label conflicts (same content, different labels; last one kept): {summary.label_conflicts}")


@cli.command()
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_fail_cleanly
def info(store, as_json):
    """Show what a store holds: images, faces, labels per split, errors by reason."""
    from agestimate.store import EmbeddingStore

    with EmbeddingStore(store) as db:
        summary = db.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
