import cv2
import numpy as np
import pytest
from insightface.app.common import Face

from agestimate.faces.encoder import FaceEncoder
from agestimate.io.images import load_image
from agestimate.runtime.registry import load_model

from conftest import FIXTURES, PATIENCE_SECONDS


def test_group_photo_yields_every_face(encoder, players_path):
    encoded = encoder.encode(players_path)
    assert encoded.ok and (encoded.width, encoded.height) == (1237, 800)
    scores = [face.score for face in encoded.faces]
    # the 16 team members and staff score >= 0.75; 6 smaller faces in the crowd behind score 0.5-0.65
    assert sum(score >= 0.75 for score in scores) == 16
    assert len(encoded.faces) == 22
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in encoded.faces]
    assert areas == sorted(areas, reverse=True)
    assert encoded.embeddings.shape == (22, 512)
    assert np.allclose(np.linalg.norm(encoded.embeddings, axis=1), 1, atol=1e-5)


def test_embeddings_equal_insightface_arcface_get(encoder, players_path):
    recognizer = load_model("recognizer", backend="onnxruntime")  # insightface's ArcFaceONNX over the pinned file
    encoded = encoder.encode(players_path)
    bgr = cv2.imread(str(players_path))
    for detection, embedding in zip(encoded.faces, encoded.embeddings):
        reference = recognizer.get(bgr, Face(bbox=detection.box, kps=detection.landmarks, det_score=detection.score))
        cosine = float(reference @ embedding / np.linalg.norm(reference))
        assert cosine > 0.999


def test_max_faces_keeps_the_largest(players_path):
    encoder = FaceEncoder(max_faces=3, threads=2)
    faces = encoder.detect(load_image(players_path))
    everything = FaceEncoder(threads=2).detect(load_image(players_path))
    assert len(faces) == 3
    assert [f.box.tolist() for f in faces] == [f.box.tolist() for f in everything[:3]]
    with pytest.raises(ValueError, match="max_faces must be at least 1"):
        FaceEncoder(max_faces=0)


def test_tight_crops_are_detected_and_fgnet_photos_too(encoder):
    crops = sorted((FIXTURES / "utkface").iterdir())
    photos = sorted((FIXTURES / "fgnet").iterdir())
    results = list(encoder.encode_batch(crops + photos, batch_size=4))
    assert [r.source for r in results] == [str(p) for p in crops + photos]
    assert all(len(r.faces) >= 1 for r in results)
    assert all(r.faces[0].method in ("detected", "padded") for r in results)


def test_template_fallback_only_for_crops():
    blank = np.full((200, 200, 3), 128, np.uint8)
    assert FaceEncoder(threads=1).detect(blank) == []
    faces = FaceEncoder(crops=True, threads=1).detect(blank)
    assert [f.method for f in faces] == ["template"]
    assert faces[0].score == 0.0


def test_template_alignment_is_close_to_detected_alignment(encoder):
    """On a tight crop the template must give nearly the embedding that detection gives."""
    crop = load_image(next((FIXTURES / "utkface").iterdir()))
    detected = encoder.detect(crop)
    template = FaceEncoder(crops=True, det_thresh=1.01, threads=1).detect(crop)
    assert template[0].method == "template"
    (a, b), _ = encoder.embed(encoder.align(crop, detected[:1] + template))
    assert float(a @ b) > 0.6


def test_bad_sources_come_back_as_errors_in_order(encoder, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    good = next((FIXTURES / "utkface").iterdir())
    results = list(encoder.encode_batch([good, bad, good]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.kind == "not an image" and "bad.jpg" in str(results[1].error)
    assert np.array_equal(results[0].embeddings, results[2].embeddings)
    assert results[0].features.shape == (1, encoder.descriptor.dim)


def first_results(batches, count, seconds=PATIENCE_SECONDS):
    """The first `count` items of `batches`, or as many as came within `seconds`."""
    import threading

    got = []

    def consume():
        for item in batches:
            got.append(item)
            if len(got) == count:
                return

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(seconds)
    return got


def test_a_stalled_faceless_stream_still_yields_what_it_has(encoder):
    """A camera that has given 3 empty frames and waits for the next: the 3 come out now,
    not when a batch of faces is full."""
    import threading

    import agestimate

    released = threading.Event()
    agestimate.predict(np.zeros((64, 64, 3), np.uint8))  # the default model loaded before the wait

    def camera():
        for _ in range(3):
            yield np.full((96, 128, 3), 120, np.uint8)
        released.wait(PATIENCE_SECONDS)

    try:
        encoded = first_results(encoder.encode_batch(camera(), batch_size=64), 3)
        predicted = first_results(agestimate.predict_batch(camera(), batch_size=32), 3)
    finally:
        released.set()
    assert [len(result.faces) for result in encoded] == [0, 0, 0]
    assert [(result.ok, result.faces) for result in predicted] == [(True, [])] * 3
