"""The int8 face models for CPUs without bf16: post-training quantization with NNCF.

    pip install -e ".[quantize]"
    python -m agestimate.training.quantize --store utk.store --fgnet ../shared/data/fgnet/images \
        --out agestimate/weights/int8

On a CPU without native bf16, f32 is what OpenVINO computes, and the recogniser is most of an
image's time (BENCHMARKS.md, issue 26). Quantized to int8 it runs 1.4-1.5 times faster under
AVX2. Two models are written as OpenVINO IR (`.xml` + `.bin`), then pinned like the other
weights (`agestimate.runtime.registry.REGISTRY`; the SHA-256 sums are printed at the end):

- `recogniser.xml`: the recogniser with the default descriptor's taps and task branch
  (`agestimate.faces.descriptors.tapped_recognizer`), quantized with accuracy control.
  250 aligned UTKFace train crops calibrate it and 150 others validate it. The score is
  the mean of two cosines to f32: the identity embedding's and the descriptor features'.
  Layers go back to f32 until the score is within 0.002 of f32.
- `detector.xml`: SCRFD. It is calibrated on UTKFace train crops at the detector size they
  meet, 224, and on FG-NET photos at theirs.

Rerun it whenever the task branch changes: the recogniser's int8 graph contains the branch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from agestimate.faces.descriptors import (
    DEFAULT_DESCRIPTOR,
    EMBEDDING_OUTPUT,
    Descriptor,
    recogniser_input,
    tapped_recognizer,
)
from agestimate.io.images import load_image
from agestimate.runtime.registry import load_model, weight_path
from agestimate.store.store import EmbeddingStore

from .branch import aligned_crops

CALIBRATION_CROPS, VALIDATION_CROPS = 250, 150
MAX_DROP = 0.002  # of the mean cosine to f32 (embedding and features)


def training_crops(store, count: int, seed: int = 0) -> np.ndarray:
    """Aligned crops (count, 112, 112, 3) of random labelled faces of the store's train split."""
    with EmbeddingStore(store) as db:
        records = db.faces(split="train", labelled=True, primary=True, descriptor="emb")
    chosen = np.random.default_rng(seed).choice(len(records), count, replace=False)
    return aligned_crops(records.path[chosen], records.landmarks[chosen])


def quantize_recogniser(crops: np.ndarray):
    """The tapped recogniser as an int8 OpenVINO model: `CALIBRATION_CROPS` of `crops` calibrate, the rest validate."""
    import nncf
    import onnx
    import openvino

    core = openvino.Core()
    blocks = list(Descriptor.parse(DEFAULT_DESCRIPTOR).blocks)
    model = core.read_model(model=tapped_recognizer(onnx.load(str(weight_path("recognizer"))), blocks).SerializeToString(),
                            weights=b"")
    outputs = [EMBEDDING_OUTPUT, *blocks]
    calibration, validation = crops[:CALIBRATION_CROPS], recogniser_input(crops[CALIBRATION_CROPS:])

    def embedding_and_features(compiled, blob):
        results = compiled(blob)
        values = {name: results[compiled.output(name)].reshape(len(blob), -1) for name in outputs}
        return values[EMBEDDING_OUTPUT], np.concatenate([values[name] for name in blocks], axis=1)

    reference = embedding_and_features(core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), validation)

    def cosine(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    def validate(compiled, items):
        scores = []
        for index in items:
            embedding, features = embedding_and_features(compiled, validation[index:index + 1])
            scores.append((cosine(embedding[0], reference[0][index]) + cosine(features[0], reference[1][index])) / 2)
        return float(np.mean(scores)), scores

    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset([recogniser_input(calibration[i:i + 1]) for i in range(len(calibration))]),
        nncf.Dataset(list(range(len(validation)))), validate, max_drop=MAX_DROP, preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU, subset_size=len(calibration))


def detector_inputs(crop_paths, photo_paths) -> list[np.ndarray]:
    """SCRFD's input blobs of images at the detector size the library gives them (see `FaceEncoder.detect`)."""
    from agestimate.faces.encoder import detector_size

    detector = load_model("detector", backend="onnxruntime")
    blobs = []
    for path in [*crop_paths, *photo_paths]:
        bgr = np.ascontiguousarray(load_image(path)[:, :, ::-1])
        size = detector_size(max(bgr.shape[:2]), 640)  # FaceEncoder's default det_size
        blobs.append(detector._prepare_input_blob(bgr, (size, size)))
    return blobs


def quantize_detector(blobs):
    import nncf
    import openvino

    model = openvino.Core().read_model(model=weight_path("detector").read_bytes(), weights=b"")
    return nncf.quantize(model, nncf.Dataset(blobs), preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU,
                         subset_size=len(blobs))


def save(model, path: Path) -> dict:
    """Write `model` as OpenVINO IR at `path` (.xml, and .bin beside it); their SHA-256 sums."""
    import openvino

    path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, path, compress_to_fp16=False)
    return {file.name: hashlib.sha256(file.read_bytes()).hexdigest() for file in (path, path.with_suffix(".bin"))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a store with a train split (UTKFace): calibration crops")
    parser.add_argument("--fgnet", required=True, help="FG-NET's images folder: photos calibrating the detector")
    parser.add_argument("--out", required=True, help="folder receiving recogniser.xml/.bin and detector.xml/.bin")
    args = parser.parse_args(argv)
    out = Path(args.out)
    crops = training_crops(args.store, CALIBRATION_CROPS + VALIDATION_CROPS)
    sums = save(quantize_recogniser(crops), out / "recogniser.xml")
    with EmbeddingStore(args.store) as db:
        crop_paths = np.random.default_rng(1).choice(db.faces(split="train", labelled=True, primary=True,
                                                               descriptor="emb").path, 150, replace=False)
    photos = sorted(Path(args.fgnet).iterdir())[::3]
    sums |= save(quantize_detector(detector_inputs(crop_paths, photos)), out / "detector.xml")
    print(json.dumps({"sha256": sums}, indent=2))


if __name__ == "__main__":
    main()
