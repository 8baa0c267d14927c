"""End to end at tiny size: embed labelled faces, train heads, evaluate, predict (CLI and Python)."""

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from agestimate.cli.main import cli  # noqa: E402
from agestimate.errors import StoreError  # noqa: E402
from agestimate.estimator import FROZEN_MODEL, Estimator  # noqa: E402
from agestimate.heads.model import AgeGenderHeads  # noqa: E402
from agestimate.io.labels import GENDER_NAMES  # noqa: E402
from agestimate.store.store import EmbeddingStore  # noqa: E402

from conftest import add_bad_files  # noqa: E402

EXPECTED_KEYS = {"n", "mae", "cs5", "one_off_adience8", "exact_adience8", "gender_accuracy", "mae_60plus", "bias", "bias_20_29"}


def run(*args, exit_code=0):
    result = CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store of 16 labelled faces (4 people, train/val/test) and heads trained on it."""
    from PIL import Image

    from conftest import FIXTURES

    root = tmp_path_factory.mktemp("e2e")
    folder = root / "faces"
    folder.mkdir()
    rows = []
    for i, path in enumerate(sorted((FIXTURES / "utkface").iterdir())):
        age, gender = path.name.split("_")[:2]
        for mirrored in (False, True):
            name = f"{i}{'m' if mirrored else ''}.jpg"
            image = Image.open(path)
            (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else image).save(folder / name, quality=95)
            split = ["train", "train", "val", "test"][(2 * i + mirrored) % 4]
            rows.append([name, age, gender, f"p{i % 4}", split])
    with open(folder / "labels.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["path", "age", "gender", "person", "split"], *rows])
    store, model = root / "store", root / "model"
    run("embed", folder, "--store", store, "--labels", folder / "labels.csv")
    run("train", "--store", store, "--out", model, "--epochs", "3")
    return store, model, folder


def test_train_writes_an_onnx_model_with_its_card(trained):
    store, model, _ = trained
    card = json.loads((model / "model.json").read_text())
    assert (model / "heads.onnx").is_file()
    assert card["descriptor"] == "grid509+adapted" and card["input_dim"] == 4096
    assert card["data"]["faces_per_split"] == {"train": 8, "val": 4, "test": 4}
    assert EXPECTED_KEYS | {"coverage_80", "median_width_90", "under_18_accuracy", "gender_ece"} <= set(card["metrics"]["test"])
    assert len(card["embedding_model_sha256"]) == 64
    assert card["calibration"]["sources"] == [{"store": str(store), "split": "val", "faces": 4}]
    assert len(card["calibration"]["age"]["scores"]) == 1  # 4 faces: too few for groups


@pytest.fixture
def calibrated_on_all(trained, tmp_path):
    """A copy of the trained model calibrated on all 16 faces of the store, with the CLI."""
    import shutil

    store, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    result = run("calibrate", "--model", copy, "--store", store, "--split", "all")
    assert "calibrated" in result.stdout and "16 faces" in result.stdout
    return copy


def test_interval_columns_and_levels_in_cli_predictions(trained, calibrated_on_all, tmp_path):
    _, _, folder = trained
    widths = {}
    for level in ("0.5", "0.8"):
        rows = list(csv.DictReader(io.StringIO(run("predict", folder / "0.jpg", folder / "1.jpg", "--model", calibrated_on_all,
                                                   "--interval", level).stdout)))
        for row in rows:
            assert float(row["age_low"]) <= float(row["age"]) <= float(row["age_high"])
        widths[level] = [float(row["age_high"]) - float(row["age_low"]) for row in rows]
    assert all(wide >= narrow for narrow, wide in zip(widths["0.5"], widths["0.8"])) and widths["0.8"] != widths["0.5"]
    # 16 calibration faces cannot bound a 90% interval: conformal prediction says so with an infinite end (empty)
    [row] = list(csv.DictReader(io.StringIO(run("predict", folder / "0.jpg", "--model", calibrated_on_all, "--interval", "0.9").stdout)))
    assert float(row["age_low"]) == 0 and row["age_high"] == ""
    faces = Estimator.load(calibrated_on_all).predict(folder / "0.jpg", interval=0.9)
    assert faces[0].age_interval[1] == float("inf") and faces[0].to_dict()["age_interval"] == [0.0, None]
    bad = CliRunner().invoke(cli, ["predict", str(folder / "0.jpg"), "--interval", "80"])
    assert bad.exit_code == 2 and "0<x<1" in bad.output
    faces = Estimator.load(calibrated_on_all).predict(folder / "0.jpg", interval=0.5)
    assert faces[0].age_interval[0] <= faces[0].age <= faces[0].age_interval[1]
    metrics = json.loads(run("eval", "--model", calibrated_on_all, "--store", trained[0], "--split", "all", "--json").stdout)
    assert metrics["coverage_80"] >= 0.8 and metrics["n"] == 16  # in-sample: the calibration faces themselves


def test_cli_predict_lists_store_neighbours(trained):
    store, model, folder = trained
    result = run("predict", folder / "0.jpg", "--model", model, "--neighbours", store, "--k", "3")
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    neighbours = json.loads(row["neighbours"])
    assert len(neighbours) == 3 and neighbours[0]["file"].endswith("/0.jpg") and neighbours[0]["similarity"] > 0.99
    assert neighbours[0]["age"] == float(folder.joinpath("labels.csv").read_text().splitlines()[1].split(",")[1])
    assert {"file", "age", "gender", "split", "similarity"} <= set(neighbours[1])


def test_eval_json_report_and_lopo(trained, tmp_path):
    store, model, _ = trained
    metrics = json.loads(run("eval", "--model", model, "--store", store, "--split", "test", "--json").stdout)
    assert EXPECTED_KEYS <= set(metrics) and metrics["n"] == 4
    with EmbeddingStore(store) as db:
        test = db.faces(split="test", labelled=True, primary=True)
    outputs = AgeGenderHeads.load(model).predict(test.features)
    errors = np.abs(outputs.age - test.age)
    assert metrics["mae"] == pytest.approx(errors.mean(), abs=1e-5) and metrics["cs5"] == (errors <= 5).mean()
    assert metrics["gender_accuracy"] == (outputs.gender == test.gender).mean()
    run("eval", "--model", model, "--store", store, "--split", "all", "--report", tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {
        "report.md", "metrics.json", "predicted_vs_true.png", "confusion_adience8.png", "mae_per_decade.png"}
    assert "| true age | faces | MAE | bias | gender % |" in (tmp_path / "report" / "report.md").read_text()
    clean = json.loads(run("eval", "--model", model, "--store", store, "--exclude-near-duplicates", "0.3", "--json").stdout)
    assert clean["n"] + clean["excluded_near_duplicates"] == 4 and clean["mae_with_near_duplicates"] == metrics["mae"]
    lopo = json.loads(run("eval", "--store", store, "--protocol", "lopo", "--epochs", "2", "--json").stdout)
    assert lopo["n"] == 16
    # a shipped model by its name; `frozen` reads grid509, a part of the store's default descriptor
    frozen = json.loads(run("eval", "--model", "frozen", "--store", store, "--split", "test", "--json").stdout)
    with EmbeddingStore(store) as db:
        test = db.faces(split="test", labelled=True, primary=True, descriptor="grid509")
    assert frozen["mae"] == pytest.approx(np.abs(AgeGenderHeads.load(FROZEN_MODEL).predict(test.features).age - test.age).mean(),
                                          abs=1e-5)


def test_train_with_cae_augmentation_dropout_and_child_gender_weight_records_them(trained, tmp_path):
    store, _, _ = trained
    run("train", "--store", store, "--out", tmp_path / "cae", "--epochs", "2", "--augment", "cae", "--dropout", "0.5",
        "--child-gender-weight", "3")
    card = json.loads((tmp_path / "cae" / "model.json").read_text())
    assert card["augmentation"] == "cae" and card["options"]["dropout"] == 0.5
    assert card["options"]["child_gender_weight"] == 3.0


def test_ablation_prints_the_five_variants(trained):
    store, _, _ = trained
    rows = json.loads(run("ablation", "--store", store, "--seeds", "0", "--epochs", "2", "--json").stdout)
    assert [row["variant"] for row in rows] == ["FC", "EVR", "EVR+GP", "EVR+RAPL", "EVR+RAPL+GP"]
    assert rows[0]["gender_accuracy"] is None and rows[2]["gender_accuracy"] is not None


def test_estimator_predicts_every_face_of_the_group_photo(trained, players_path):
    _, model, _ = trained
    estimator = Estimator.load(model, threads=2)
    faces = estimator.predict(players_path, return_embedding=True)
    assert len(faces) == 22
    encoded = estimator.encoder.encode(players_path)
    outputs = estimator.predict_features(encoded.features)
    assert np.allclose(outputs.age, [f.age for f in faces], atol=1e-4)
    assert np.allclose(outputs.age_spread, [f.age_spread for f in faces], atol=1e-4)
    assert np.allclose(outputs.confidence, [f.confidence for f in faces], atol=1e-4)
    assert [f.gender for f in faces] == [GENDER_NAMES[code] for code in outputs.gender]
    female = outputs.prob_female
    assert np.allclose([f.gender_probability for f in faces], np.where(outputs.gender == 1, female, 1 - female), atol=1e-5)
    assert np.allclose(np.stack([f.embedding for f in faces]), encoded.embeddings)
    assert [f.box for f in faces] == [tuple(float(v) for v in face.box) for face in encoded.faces]
    assert set(faces[0].to_dict()) >= {"box", "age", "age_group", "gender", "confidence", "embedding"}


def test_predict_batch_keeps_order_and_reports_bad_images(trained, players_path, tmp_path):
    _, model, folder = trained
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image")
    results = list(Estimator.load(model).predict_batch([folder / "0.jpg", bad, players_path]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_kind == "not an image" and len(results[2].faces) == 22


def test_cli_predict_rows_reasons_jsonl_and_annotations(trained, tmp_path):
    import numpy as np
    from PIL import Image

    _, model, folder = trained
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0.jpg", "1.jpg"):
        (images / name).write_bytes((folder / name).read_bytes())
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(images / "wall.png")
    add_bad_files(images)
    result = run("predict", images, "--model", model, "--annotate", tmp_path / "drawn")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_file = {row["file"].rsplit("/", 1)[1]: row for row in rows}
    assert by_file["wall.png"]["error"] == "no face"
    assert "not a recognised image format" in by_file["notes.jpg"]["error"]
    assert by_file["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert "truncated" in by_file["truncated.jpg"]["error"]
    face = Estimator.load(model).predict(images / "0.jpg")[0]
    assert float(by_file["0.jpg"]["age"]) == round(face.age, 4) and by_file["0.jpg"]["gender"] == face.gender
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["0.jpg", "1.jpg"]
    run("predict", images / "*.jpg", "--model", model, "--out", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and sum("age" in line for line in lines) == 2


def test_video_rows_per_frame_and_an_annotated_copy(trained, players_path, tmp_path):
    import cv2

    _, model, _ = trained
    photo = cv2.resize(cv2.imread(str(players_path)), (640, 480))
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for shift in range(4):
        writer.write(np.roll(photo, 4 * shift, axis=1))
    writer.release()
    result = run("predict", clip, "--model", model, "--annotate", tmp_path / "drawn", "--every", "2", "--max-faces", "3")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["frame"], row["face"]) for row in rows] == [(str(f), str(i)) for f in range(4) for i in range(3)]
    assert rows[0]["age"] == rows[3]["age"]  # frame 1 carries frame 0's faces over
    assert float(rows[3]["x1"]) - float(rows[0]["x1"]) == pytest.approx(4 * 640 / 640, abs=1.5)  # ... and follows them
    assert [row["track"] for row in rows[:3]] == ["1", "2", "3"] and [row["track"] for row in rows[6:9]] == ["1", "2", "3"]
    assert "4 frames" in result.stderr and "frames/s" in result.stderr
    annotated = cv2.VideoCapture(str(tmp_path / "drawn" / "clip.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    missing = run("predict", tmp_path / "nope.mp4", clip, "--model", model, "--max-frames", "1")
    rows = list(csv.DictReader(io.StringIO(missing.stdout)))
    assert "cannot open the video" in rows[0]["error"] and rows[0]["file"].endswith("nope.mp4")
    assert len(rows) > 1 and {row["frame"] for row in rows[1:]} == {"0"}


def test_a_model_without_a_gender_head_reports_no_gender(trained, players_path, tmp_path):
    store, _, _ = trained
    run("train", "--store", store, "--out", tmp_path / "ages", "--epochs", "2", "--no-gender")
    faces = Estimator.load(tmp_path / "ages").predict(players_path)
    assert len(faces) == 22 and {(f.gender, f.gender_probability) for f in faces} == {(None, None)}
    rows = list(csv.DictReader(io.StringIO(run("predict", players_path, "--model", tmp_path / "ages",
                                              "--annotate", tmp_path / "drawn").stdout)))
    assert len(rows) == 22 and {(row["gender"], row["gender_probability"]) for row in rows} == {("", "")}
    run("predict", players_path, "--model", tmp_path / "ages", "--out", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {(line["gender"], line["gender_probability"]) for line in lines} == {(None, None)}


def test_each_input_gets_its_own_annotated_copy_from_one_decode(trained, tmp_path, monkeypatch):
    from PIL import Image

    import agestimate.faces.encoder
    import agestimate.io.images

    _, model, folder = trained
    inputs = {"a/x.jpg": "0.jpg", "b/x.jpg": "1.jpg", "c/x.png": "2.jpg", "c/x.jpg": "3.jpg"}
    for i, (name, source) in enumerate(inputs.items()):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(folder / source).resize((200 + 10 * i, 200 + 10 * i)).save(tmp_path / "in" / name)
    decoded = []

    def counted(load):
        def load_image(source, **options):
            decoded.append(source)
            return load(source, **options)
        return load_image

    for module in (agestimate.faces.encoder, agestimate.io.images):  # where prediction decodes, and where drawing did again
        monkeypatch.setattr(module, "load_image", counted(module.load_image))
    run("predict", tmp_path / "in", "--recursive", "--model", model, "--annotate", tmp_path / "drawn")
    assert sorted(map(str, decoded)) == sorted(str(tmp_path / "in" / name) for name in inputs)
    for i, name in enumerate(inputs):
        drawn = np.asarray(Image.open(tmp_path / "drawn" / name).convert("RGB"))
        assert drawn.shape == (200 + 10 * i, 200 + 10 * i, 3), name  # its own input, not another's


def test_video_frames_without_a_face_get_rows_and_count(trained, players_path, tmp_path):
    import cv2

    _, model, _ = trained
    photo = cv2.resize(cv2.imread(str(players_path)), (640, 480))
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for frame in (np.full_like(photo, 90), np.full_like(photo, 90), photo, photo):
        writer.write(frame)
    writer.release()
    result = run("predict", clip, "--model", model, "--max-faces", "1")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["frame"], row["face"], row["error"]) for row in rows] == [
        ("0", "", "no face"), ("1", "", "no face"), ("2", "0", ""), ("3", "0", "")]
    assert "0 images, 4 video frames, 2 faces, 2 images or frames without a face" in result.stderr


def test_clear_errors_for_a_card_without_descriptor_rapl_with_one_epoch_and_a_missing_split(trained, players_path,
                                                                                             tmp_path):
    import shutil
    import sqlite3

    store, model, _ = trained
    shutil.copytree(model, tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    del card["descriptor"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    for command in (["predict", players_path], ["eval", "--store", store]):
        failed = run(*command, "--model", tmp_path / "m", exit_code=1)
        assert "model.json names no descriptor" in failed.output and "Traceback" not in failed.output

    for command in (["train", "--store", store, "--out", tmp_path / "x"], ["eval", "--store", store, "--protocol", "lopo"],
                    ["ablation", "--store", store]):
        failed = run(*command, "--epochs", "1", exit_code=2)
        assert "RAPL needs epochs >= 2" in failed.output and "--no-rapl" in failed.output

    shutil.copytree(store, tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "store.sqlite") as db:
        db.execute("UPDATE labels SET split = 'train' WHERE split = 'val'")
    failed = run("ablation", "--store", tmp_path / "s", "--seeds", "0", "--epochs", "2", exit_code=1)
    assert "needs labelled faces in the train, val and test splits; none in ['val']" in failed.output


@pytest.fixture(scope="module")
def people_store(trained, tmp_path_factory):
    """The same faces as a store like FG-NET: people, no split."""
    _, _, folder = trained
    root = tmp_path_factory.mktemp("people")
    rows = list(csv.reader(open(folder / "labels.csv")))[1:]
    with open(root / "labels.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["path", "age", "gender", "person"], *[[str(folder / row[0]), *row[1:3], f"q{row[3]}"] for row in rows]])
    run("embed", folder, "--store", root / "store", "--labels", root / "labels.csv")
    return root / "store"


def test_train_on_two_stores_refits_with_every_person(trained, people_store, tmp_path):
    store, _, _ = trained
    result = run("train", "--store", store, "--store", people_store, "--out", tmp_path / "m", "--epochs", "3", "--refit",
                 "--val-fraction", "0.25", "--repeats", "1,2", "--json")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["data"]["stores"] == [str(store), str(people_store)]
    assert card["data"]["faces_per_source"] == {str(store): {"train": 8, "val": 4, "test": 4}, str(people_store): {"train": 16}}
    assert card["data"]["faces_per_split"] == {"train": 24, "val": 4, "test": 4}
    choice = card["epoch_choice"]
    assert choice["val_faces_per_source"] == {str(store): 4, str(people_store): 4}  # one of four people held out
    assert card["best_epoch"] == choice["best_epoch"] and len(card["history"]) == choice["best_epoch"]
    assert set(card["metrics_by_source"]) == {str(store), str(people_store)}
    assert set(card["metrics_by_source"][str(people_store)]) == {"train"}
    assert "store_test_mae" in json.loads(result.stdout)
    assert card["data"]["repeats_per_epoch"] == {str(store): 1, str(people_store): 2}
    wrong = CliRunner().invoke(cli, ["train", "--store", str(store), "--out", str(tmp_path / "x"), "--repeats", "1,2"])
    assert wrong.exit_code == 2 and "one count of 1 or more per --store" in wrong.output


def test_person_folds_protocol_over_two_stores(trained, people_store):
    store, _, _ = trained
    folds = json.loads(run("eval", "--store", store, "--store", people_store, "--protocol", "folds", "--folds", "2",
                           "--epochs", "2", "--json").stdout)
    # the people of the store without splits, each predicted once; the first store's keep their split (as LFW's)
    assert folds["n"] == 16 and "bias_20_29" in folds
    shuffled = json.loads(run("eval", "--store", store, "--store", people_store, "--protocol", "folds", "--folds", "2",
                              "--epochs", "2", "--shuffles", "2", "--json").stdout)
    first, second = shuffled["mae_per_shuffle"]
    assert shuffled["n"] == 32 and first == pytest.approx(folds["mae"])  # shuffle 0 is the run above
    assert shuffled["mae"] == pytest.approx((first + second) / 2)
    result = CliRunner().invoke(cli, ["eval", "--store", str(store), "--protocol", "folds", "--folds", "9", "--epochs", "2"])
    assert result.exit_code == 1 and "9 folds of 4 people" in result.output


def test_person_fold_evaluation_calibrates_each_fold_without_its_people(trained, people_store):
    from agestimate.evaluation.folds import fold_of_each_face, person_fold_evaluation
    from agestimate.evaluation.measure import labelled_faces

    store, model, _ = trained
    records, _ = labelled_faces(people_store)
    fold = fold_of_each_face(records, 2, seed=3)
    for person in set(records.person):
        assert len(set(fold[records.person == person])) == 1  # all photos of a person in one fold
    assert sorted(len(set(records.person[fold == k])) for k in (0, 1)) == [2, 2]
    result = person_fold_evaluation(model, people_store, calibration_sources=[(store, "val")], folds=2, seed=3)
    assert result.metrics["n"] == 16 and len(result.metrics["fold_coverage_80"]) == 2
    with pytest.raises(StoreError, match="at least 5 people"):
        fold_of_each_face(records, 5)


def test_train_without_label_outliers_and_near_duplicates(trained, tmp_path):
    store, _, _ = trained
    run("train", "--store", store, "--out", tmp_path / "m", "--epochs", "2", "--exclude-near-duplicates", "0.3",
        "--exclude-label-outliers")
    data = json.loads((tmp_path / "m" / "model.json").read_text())["data"]
    excluded = data["excluded_training_faces"]
    assert set(excluded) == {"label_outliers", "near_duplicates_of_val_test"} and data["near_duplicate_threshold"] == 0.3
    assert excluded["label_outliers"] == 2  # of 8 training faces aged 3 to 70: the outer ages sit among 25-year-olds
    assert data["faces_per_split"] == {"train": 8 - sum(excluded.values()), "val": 4, "test": 4}
