import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from agestimate.cli.main import cli
from agestimate.store.store import EmbeddingStore

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
        patched.setattr("agestimate.store.embedding.FaceEncoder", None)
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


def test_labels_given_later_apply_to_images_already_stored(face_folder, tmp_path):
    store = tmp_path / "store"
    run("embed", face_folder, "--store", store)
    second = json.loads(run("embed", face_folder, "--labels", "utkface", "--store", store, "--json").stdout)
    assert second["already_stored"] == 16 and second["labelled"] == 16 and second["label_conflicts"] == 0
    with EmbeddingStore(store) as db:
        labelled = db.faces(labelled=True, primary=True)
    assert len(labelled) == 16
    assert all(age == float(path.rsplit("/", 1)[1].split("_")[0]) for path, age in zip(labelled.path, labelled.age))


def test_a_different_label_for_stored_content_is_reported_and_kept(face_folder, tmp_path):
    store, names = tmp_path / "store", sorted(p.name for p in face_folder.iterdir())
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age,split\n" + "".join(f"faces/{name},{20 + i},train\n" for i, name in enumerate(names)))
    run("embed", face_folder, "--labels", csv, "--store", store)
    csv.write_text(csv.read_text().replace(f"faces/{names[3]},23,", f"faces/{names[3]},33,"))
    again = run("embed", face_folder, "--labels", csv, "--store", store)
    assert "label conflicts: 1" in again.stdout
    assert f"{names[3]}: label (age 33, split train) replaces (age 23, split train)" in again.stderr
    with EmbeddingStore(store) as db:
        labelled = db.faces(labelled=True, primary=True)
    assert labelled.age[[path.endswith(names[3]) for path in labelled.path]].tolist() == [33]


def test_changed_and_removed_files_leave_training_and_prune_forgets_them(face_folder, tmp_path):
    store = tmp_path / "store"
    run("embed", face_folder, "--labels", "utkface", "--store", store)
    changed, removed = sorted(face_folder.glob("*.jpg"))[:2]
    Image.open(changed).rotate(10).save(changed, quality=90)  # new content under the same name
    removed.unlink()
    summary = json.loads(run("embed", face_folder, "--labels", "utkface", "--store", store, "--json").stdout)
    assert summary["files"] == 15 and summary["embedded"] == 1 and summary["already_stored"] == 14
    info = json.loads(run("info", "--store", store, "--json").stdout)
    # the removed file is still recorded (the store cannot tell it from an unmounted disk) until pruned
    assert info["images"] == 16 and info["stale_images"] == 1 and info["labelled_faces_by_split"] == {"none": 16}
    with EmbeddingStore(store) as db:
        current = db.faces(labelled=True, primary=True)
    assert len(current) == 16 and len(set(current.sha256)) == 16  # the old content of `changed` is left out
    pruned = run("info", "--store", store, "--prune", "--json")
    assert "1 files no longer on disk, 2 images no file points at (2 faces, 2 labels)" in pruned.stderr
    info = json.loads(pruned.stdout)
    assert info["images"] == 15 and info["stale_images"] == 0 and info["faces"] == info["index_faces"]


def test_embed_takes_glob_patterns_like_predict(face_folder, tmp_path):
    summary = json.loads(run("embed", f"{face_folder}/25_*", "--store", tmp_path / "s", "--json").stdout)
    assert summary["files"] == 10 and summary["embedded"] == 10 and summary["errors"] == 0


def test_labels_with_only_an_age_or_only_a_gender_are_kept_and_counted_apart(face_folder, tmp_path):
    """LFW's CSV has no ages, FG-NET's no genders: both are labels, each counted where known."""
    names = sorted(path.name for path in face_folder.iterdir())
    rows = [f"{names[0]},,female,train", f"{names[1]},,male,train", f"{names[2]},30,,val", f"{names[3]},41,male,val"]
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age,gender,split\n" + "".join(f"{face_folder / row.split(',')[0]},{row.split(',', 1)[1]}\n"
                                                           for row in rows))
    store = tmp_path / "store"
    embedded = run("embed", *(face_folder / name for name in names[:4]), "--store", store, "--labels", labels, "--json")
    assert embedded.exit_code == 0 and json.loads(embedded.stdout)["label_problems"] == 0, embedded.output
    info = json.loads(run("info", "--store", store, "--json").stdout)
    assert info["labelled_faces_by_split"] == {"train": 2, "val": 2}
    assert info["faces_with_age_by_split"] == {"val": 2} and info["faces_with_gender_by_split"] == {"train": 2, "val": 1}
    with EmbeddingStore(store) as db:
        labelled = db.faces(labelled=True, primary=True)
    by_name = {path.rsplit("/", 1)[1]: (age, gender) for path, age, gender in zip(labelled.path, labelled.age, labelled.gender)}
    assert np.isnan(by_name[names[0]][0]) and by_name[names[0]][1] == 1
    assert by_name[names[2]] == (30, -1) and by_name[names[3]] == (41, 0)


def test_embed_reads_each_file_once_and_settles_copies_within_the_run(face_folder, tmp_path, monkeypatch):
    import builtins
    import io
    from collections import Counter

    bad = add_bad_files(face_folder)
    images = sorted(face_folder.glob("*.chip.jpg"))
    (face_folder / "zz_copy.jpg").write_bytes(images[0].read_bytes())  # copies met in the same run
    (face_folder / "zz_copy_notes.jpg").write_bytes((face_folder / "notes.jpg").read_bytes())
    reads = Counter()

    def counted(opener):
        def open_(file, *args, **kwargs):
            if str(file).startswith(str(face_folder)):
                reads[str(file)] += 1
            return opener(file, *args, **kwargs)
        return open_

    with monkeypatch.context() as patched:
        patched.setattr(io, "open", counted(io.open))
        patched.setattr(builtins, "open", counted(builtins.open))
        summary = json.loads(run("embed", face_folder, "--store", tmp_path / "store", "--json").stdout)
    assert set(reads.values()) == {1} and len(reads) == 16 + len(bad) + 2  # every file read, once
    assert summary["embedded"] == 16 and summary["already_stored"] == 1 and summary["errors"] == 4
    with EmbeddingStore(tmp_path / "store") as db:
        files = {path.rsplit("/", 1)[1]: (status, kind) for path, status, kind in db.files()}
    assert files["zz_copy.jpg"] == ("embedded", None) and files["zz_copy_notes.jpg"] == ("error", "not an image")
