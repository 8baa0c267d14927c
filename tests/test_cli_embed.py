import json

from click.testing import CliRunner

from agestimate.cli.main import cli
from agestimate.store import EmbeddingStore

from conftest import add_bad_files


def run(*args):
    result = CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)
    return result


def test_embed_a_folder_with_bad_files_then_again(face_folder, tmp_path, monkeypatch):
    bad = add_bad_files(face_folder)
    (face_folder / "readme.txt").write_text("ignored, but counted")
    store = tmp_path / "store"
    first = run("embed", face_folder, "--store", store, "--labels", "utkface", "--batch-size", "5", "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["embedded"] == 16 and summary["errors"] == 3 and summary["ignored_not_images"] == 1
    assert summary["errors_by_kind"] == {"not an image": 1, "corrupt": 1, "empty": 1}
    assert summary["label_problems"] == 0  # files that failed are not labelled

    with monkeypatch.context() as patched:  # nothing new: the models are not loaded
        patched.setattr("agestimate.embedding.FaceEncoder", None)
        second = run("embed", face_folder, "--store", store, "--labels", "utkface", "--json")
    again = json.loads(second.stdout)
    assert again["embedded"] == 0 and again["already_stored"] == 16 and again["already_failed"] == 3

    info = json.loads(run("info", "--store", store, "--json").stdout)
    assert info["images"] == 16 and info["faces"] >= 16 and info["index_faces"] == info["faces"]
    assert info["files"] == {"embedded": 16, "error": 3}
    with EmbeddingStore(store) as db:
        errors = {path.rsplit("/", 1)[1]: kind for path, kind, _ in db.errors()}
        labelled = db.faces(labelled=True, primary=True)
    assert errors == bad
    assert len(labelled) == 16 and set(labelled.age.tolist()) == {3, 25, 45, 70}


def test_copies_and_renames_are_not_embedded_twice(face_folder, tmp_path):
    store = tmp_path / "store"
    run("embed", face_folder, "--store", store)
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in list(face_folder.iterdir())[:3]:
        (copies / ("renamed_" + path.name)).write_bytes(path.read_bytes())
    summary = json.loads(run("embed", copies, "--store", store, "--json").stdout)
    assert summary["embedded"] == 0 and summary["already_stored"] == 3


def test_human_summary_and_fatal_errors(face_folder, tmp_path):
    result = run("embed", face_folder, "--store", tmp_path / "s")
    assert "16 embedded" in result.stdout and "images/s" in result.stdout
    missing = run("info", "--store", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no embedding store here" in missing.output
