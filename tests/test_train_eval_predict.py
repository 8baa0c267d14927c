"""End to end at tiny size: embed labelled faces, train heads, evaluate, predict (CLI and Python)."""

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from agestimate.cli.main import cli  # noqa: E402
from agestimate.estimator import Estimator  # noqa: E402

from conftest import add_bad_files  # noqa: E402

EXPECTED_KEYS = {"n", "mae", "cs5", "one_off_adience8", "exact_adience8", "gender_accuracy", "mae_60plus", "bias", "bias_20_29"}


def run(*args):
    result = CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store of 16 labelled faces (4 people, train/val/test) and heads trained on it."""
    from conftest import FIXTURES
    from PIL import Image

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
    assert card["descriptor"] == "grid509" and card["input_dim"] == 2048
    assert card["data"]["faces_per_split"] == {"train": 8, "val": 4, "test": 4}
    assert EXPECTED_KEYS <= set(card["metrics"]["test"])
    assert len(card["embedding_model_sha256"]) == 64


def test_eval_json_report_and_lopo(trained, tmp_path):
    store, model, _ = trained
    metrics = json.loads(run("eval", "--model", model, "--store", store, "--split", "test", "--json").stdout)
    assert EXPECTED_KEYS <= set(metrics) and metrics["n"] == 4
    assert 0 <= metrics["mae"] < 100 and 0 <= metrics["cs5"] <= 1
    run("eval", "--model", model, "--store", store, "--split", "all", "--report", tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {
        "report.md", "metrics.json", "predicted_vs_true.png", "confusion_adience8.png", "mae_per_decade.png"}
    assert "| true age | faces | MAE | bias |" in (tmp_path / "report" / "report.md").read_text()
    clean = json.loads(run("eval", "--model", model, "--store", store, "--exclude-near-duplicates", "0.3", "--json").stdout)
    assert clean["n"] + clean["excluded_near_duplicates"] == 4 and clean["mae_with_near_duplicates"] == metrics["mae"]
    lopo = json.loads(run("eval", "--store", store, "--protocol", "lopo", "--epochs", "2", "--json").stdout)
    assert lopo["n"] == 16


def test_train_with_cae_augmentation_records_it(trained, tmp_path):
    store, _, _ = trained
    run("train", "--store", store, "--out", tmp_path / "cae", "--epochs", "2", "--augment", "cae")
    assert json.loads((tmp_path / "cae" / "model.json").read_text())["augmentation"] == "cae"


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
    for face in faces:
        assert 0 <= face.age <= 100 and face.age_spread >= 0 and 0 <= face.confidence <= 1
        assert face.gender in ("male", "female") and 0.5 <= face.gender_probability <= 1
        assert face.embedding.shape == (512,)
    assert set(faces[0].to_dict()) >= {"box", "age", "age_group", "gender", "confidence", "embedding"}
    features = estimator.encoder.encode(players_path).features
    assert np.allclose(estimator.predict_embeddings(features).age, [f.age for f in faces], atol=1e-4)


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
    assert float(by_file["0.jpg"]["age"]) > 0 and by_file["0.jpg"]["gender"] in ("male", "female")
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
    assert "4 frames" in result.stderr and "frames/s" in result.stderr
    annotated = cv2.VideoCapture(str(tmp_path / "drawn" / "clip.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    missing = run("predict", tmp_path / "nope.mp4", clip, "--model", model, "--max-frames", "1")
    rows = list(csv.DictReader(io.StringIO(missing.stdout)))
    assert "cannot open the video" in rows[0]["error"] and rows[0]["file"].endswith("nope.mp4")
    assert len(rows) > 1 and {row["frame"] for row in rows[1:]} == {"0"}


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
    assert folds["n"] == 32 and "bias_20_29" in folds  # the people of both stores, each predicted once
    result = CliRunner().invoke(cli, ["eval", "--store", str(store), "--protocol", "folds", "--folds", "9", "--epochs", "2"])
    assert result.exit_code == 1 and "9 folds of 4 people" in result.output


def test_train_without_label_outliers_and_near_duplicates(trained, tmp_path):
    store, _, _ = trained
    run("train", "--store", store, "--out", tmp_path / "m", "--epochs", "2", "--exclude-near-duplicates", "0.3",
        "--exclude-label-outliers")
    data = json.loads((tmp_path / "m" / "model.json").read_text())["data"]
    excluded = data["excluded_training_faces"]
    assert set(excluded) == {"label_outliers", "near_duplicates_of_val_test"} and data["near_duplicate_threshold"] == 0.3
    assert excluded["label_outliers"] == 2  # of 8 training faces aged 3 to 70: the outer ages sit among 25-year-olds
    assert data["faces_per_split"] == {"train": 8 - sum(excluded.values()), "val": 4, "test": 4}
