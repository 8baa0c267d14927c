"""The Ray engine on a local Ray (2 CPUs): the rows and the store of the local engine, resumed,
and whole after an actor is killed mid-run."""

import csv
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agestimate.cli.main import cli
from agestimate.io.predictions import PREDICTION_COLUMNS, table_rows

from conftest import FIXTURES, PATIENCE_SECONDS, add_bad_files, wait_until

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TEXT_COLUMNS = {"file", "age_group", "gender", "detection_method", "error"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def photos(face_folder, players_path):
    """Faces (crops, a group photo), an image without a face, and bad files."""
    (face_folder / "players.jpg").write_bytes(players_path.read_bytes())
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(face_folder / "wall.png")
    add_bad_files(face_folder)
    return face_folder


def run(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def csv_rows(path):
    return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(open(path))]


def parquet_rows(path):
    import pyarrow.parquet as pq

    return [{k: str(v) for k, v in row.items() if v is not None} for row in table_rows(pq.read_table(path))]


def assert_same_rows(ours, theirs):
    """Same rows (file, face) with the same values: text exactly, numbers within 0.01."""
    key = lambda row: (row["file"], int(row.get("face", -1)))  # noqa: E731
    ours, theirs = sorted(ours, key=key), sorted(theirs, key=key)
    assert [key(row) for row in ours] == [key(row) for row in theirs]
    for mine, other in zip(ours, theirs):
        assert set(mine) == set(other), mine["file"]
        for column in mine:
            if column in TEXT_COLUMNS:
                assert mine[column] == other[column], (mine["file"], column)
            else:
                assert float(mine[column]) == pytest.approx(float(other[column]), abs=0.01), (mine["file"], column)


def test_ray_gives_the_rows_of_the_local_run_and_resumes(photos, tmp_path):
    local = tmp_path / "local.csv"
    run("predict", photos, "--out", local)
    result = run("predict", photos, "--engine", "ray", "--actors", "1", "--batch-size", "4", "--out", tmp_path / "ray.parquet")
    assert "ray, 1 actors" in result.output
    rows = parquet_rows(tmp_path / "ray.parquet")
    local_rows = csv_rows(local)
    assert_same_rows(rows, local_rows)
    by_file = {Path(row["file"]).name: row for row in rows}
    assert by_file["wall.png"]["error"] == "no face" and by_file["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert sum(Path(row["file"]).name == "players.jpg" for row in rows) == 22
    # a rerun with the same output skips every image already in it
    again = run("predict", photos, "--engine", "ray", "--actors", "1", "--out", tmp_path / "ray.parquet")
    assert f"{len({row['file'] for row in rows})} images already scored" in again.output
    assert "0 images, 0 faces" in again.output
    assert sorted(map(str, parquet_rows(tmp_path / "ray.parquet"))) == sorted(map(str, rows))
    # CSV output of the Ray engine is the local file, rows in another order
    run("predict", photos, "--engine", "ray", "--actors", "1", "--out", tmp_path / "ray.csv")
    assert sorted(open(tmp_path / "ray.csv").read().splitlines()) == sorted(local.read_text().splitlines())


def test_a_dataset_of_bytes_scores_like_paths(tmp_path):
    from agestimate.apps.distributed import score_dataset

    for path in sorted((FIXTURES / "fgnet").iterdir())[:2]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "text.jpg").write_text("not an image")
    images = ray.data.read_binary_files(str(tmp_path), include_paths=True)
    rows = table_rows(_to_table(score_dataset(images, actors=1, batch_size=2)))
    by_file = {Path(row["file"]).name: row for row in rows}
    assert set(by_file) == {"001A02.JPG", "001A43a.JPG", "text.jpg"}
    assert by_file["text.jpg"]["error"] == "not a recognised image format"
    assert 0 < by_file["001A02.JPG"]["age"] < 12 and set(by_file["001A02.JPG"]) <= set(PREDICTION_COLUMNS)


def _to_table(dataset):
    import pyarrow as pa

    return pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))


def _reader_of(path, exclude=()):
    """The pid of a process other than this one (and `exclude`) that has `path` open, or None."""
    for fd_folder in Path("/proc").glob("[0-9]*/fd"):
        if int(fd_folder.parent.name) in (os.getpid(), *exclude):
            continue
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_folder.iterdir()):
                return int(fd_folder.parent.name)
        except OSError:  # processes come and go
            continue
    return None


def _writer_once_read(pipe, exclude=()):
    """A write end of `pipe`, opened once a process (not in `exclude`) waits to read it, and its pid."""

    def opened():
        try:
            descriptor = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
        except OSError:
            return None
        for _ in range(100):  # the reader's open returns now; then its descriptor shows in /proc
            pid = _reader_of(pipe, exclude)
            if pid is not None:
                return descriptor, pid
            time.sleep(0.05)
        os.close(descriptor)
        return None

    return wait_until(opened, what=f"an actor opens {pipe}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the actor through /proc")
def test_an_actor_killed_mid_run_loses_and_repeats_nothing(face_folder, tmp_path):
    """One input is a named pipe: the actor reading it blocks there, mid-run, and is killed.
    Ray restarts it and retries its work; the pipe is then fed a photo, and the job finishes."""
    from agestimate.apps.run import predict
    from agestimate.io.sources import Sources

    paths = sorted(str(p) for p in face_folder.iterdir())
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    paths.insert(len(paths) // 2, str(pipe))
    out = tmp_path / "rows.jsonl"
    summary = {}
    job = threading.Thread(target=lambda: summary.update(
        predict(Sources(images=paths), out, engine="ray", actors=1, batch_size=2).as_dict()))
    job.start()
    descriptor, first = _writer_once_read(pipe)
    wait_until(lambda: out.exists() and out.read_text(), what="the rows before the pipe's batch are written")
    written_before = len(out.read_text().splitlines())
    assert written_before > 0  # the batches before the pipe's are done: the kill is mid-run
    os.kill(first, signal.SIGKILL)  # the actor, blocked reading the pipe
    os.close(descriptor)
    wait_until(lambda: _reader_of(pipe) != first, what="the killed actor is gone")
    descriptor, second = _writer_once_read(pipe, exclude={first})  # the restarted actor retrying the pipe's batch
    os.set_blocking(descriptor, True)
    os.write(descriptor, (FIXTURES / "fgnet" / "001A02.JPG").read_bytes())
    os.close(descriptor)
    job.join(timeout=PATIENCE_SECONDS)
    assert not job.is_alive()
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["file"] for row in rows) == sorted(paths)  # every image once, one face each
    assert all("age" in row for row in rows) and summary["images"] == len(paths) > written_before


def test_embed_on_ray_fills_the_store_the_local_engine_fills(face_folder, tmp_path):
    from agestimate.store.store import EmbeddingStore

    (face_folder / "copy.jpg.chip.jpg").write_bytes(next(face_folder.glob("25_*")).read_bytes())  # same content
    bad = add_bad_files(face_folder)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run("embed", face_folder, "--store", local, "--labels", "utkface")
    result = run("embed", face_folder, "--store", distributed, "--labels", "utkface", "--engine", "ray", "--actors", "1",
                 "--json")
    import json

    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["embedded"] == 16 and summary["already_stored"] == 1 and summary["errors"] == len(bad)
    assert summary["runtime"]["engine"] == "ray" and summary["label_problems"] == 1  # copy.jpg's name has no label
    with EmbeddingStore(local) as a, EmbeddingStore(distributed) as b:
        mine, theirs = b.summary(), a.summary()
        for key in ("images", "faces", "files", "errors_by_kind", "labelled_images_by_split", "faces_by_method"):
            assert mine[key] == theirs[key], key
        ours, reference = b.faces(), a.faces()
        order, reference_order = np.argsort(ours.sha256), np.argsort(reference.sha256)
        assert ours.sha256[order].tolist() == reference.sha256[reference_order].tolist()
        assert np.abs(ours.embedding[order] - reference.embedding[reference_order]).max() < 0.02
        assert np.array_equal(ours.age[order], reference.age[reference_order], equal_nan=True)
        assert b.files() == a.files()
    # a crash after an image was stored but before its file was recorded: resumed without duplicates
    with sqlite3.connect(distributed / "store.sqlite") as db:
        db.execute("DELETE FROM files WHERE path LIKE '%45_0_0%' OR path LIKE '%notes.jpg'")
    result = run("embed", face_folder, "--store", distributed, "--labels", "utkface", "--engine", "ray", "--actors", "1",
                 "--json")
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["embedded"] == 0 and summary["errors"] == 1
    assert summary["already_stored"] == summary["files"] - 1 - summary["already_failed"]
    with EmbeddingStore(distributed) as b:
        assert b.summary()["images"] == mine["images"] and b.summary()["faces"] == mine["faces"]
        assert b.summary()["files"] == mine["files"]


def test_ray_options_need_the_ray_engine(tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(tmp_path), "--actors", "2"])
    assert result.exit_code == 2 and "--engine ray" in result.output
    result = CliRunner().invoke(cli, ["predict", str(tmp_path), "--engine", "ray", "--annotate", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--engine local" in result.output
