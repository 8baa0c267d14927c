"""The face models on each runtime: speed, fidelity to ONNX Runtime fp32, and thread layouts.

    python benchmarks/backends.py --data ../shared/data --count 300

On the same images (the first `count` of the UTKFace test split and of FG-NET):
- recogniser ms per aligned crop (batches of 32, the default descriptor's tapped graph) on ONNX
  Runtime fp32, OpenVINO f32, int8 (`agestimate.training.quantize`) and, where the CPU has it,
  OpenVINO bf16; interleaved rounds, median (``ONEDNN_MAX_CPU_ISA=AVX2`` runs it as a CPU without bf16);
- fidelity to ONNX Runtime fp32: cosine of the identity embeddings (mean, 1st percentile) and of
  the descriptor features, and the shift of SCRFD's five landmarks in pixels (median, max);
- detector ms per image, each runtime, on the same images;
- thread layouts: `FaceEncoder.encode_batch` images/s with the detector (worker thread) and the
  recogniser (caller's thread) given different thread counts, interleaved, median.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from agestimate.estimator import FLIP_MODEL
from agestimate.faces.descriptors import DescriptorModel
from agestimate.faces.encoder import FaceEncoder
from agestimate.heads.model import AgeGenderHeads
from agestimate.io.images import load_image
from agestimate.runtime import sessions as runtimes
from agestimate.runtime.registry import load_model

from end_to_end import data_sets

ROUNDS = 5


def runtime_choices() -> dict[str, dict]:
    choices = {"onnxruntime fp32": dict(backend="onnxruntime"), "openvino f32": dict(backend="openvino", precision="f32"),
               "openvino int8": dict(backend="openvino", precision="int8")}
    if runtimes.cpu_has_bf16():
        choices["openvino bf16"] = dict(backend="openvino", precision="bf16")
    return choices


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def median_rounds(functions: dict, rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds of each function, median over interleaved rounds (this machine is noisy)."""
    seconds = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - began)
    return {name: float(np.median(values)) for name, values in seconds.items()}


def measure(paths: list[Path], threads: int | None) -> dict:
    images = [load_image(path) for path in paths]
    choices = runtime_choices()
    encoders = {name: FaceEncoder(threads=threads, **options) for name, options in choices.items()}
    detections = {name: [encoder.detect(image) for image in images] for name, encoder in encoders.items()}
    aligned = np.concatenate([FaceEncoder.align(image, faces) for image, faces in zip(images, detections["onnxruntime fp32"])])
    batches = [aligned[i:i + 32] for i in range(0, len(aligned), 32)]
    outputs = {name: [encoder.embed(batch) for batch in batches] for name, encoder in encoders.items()}
    flip = DescriptorModel(AgeGenderHeads.load(FLIP_MODEL).require_descriptor(), threads=threads)
    recogniser = median_rounds({**{name: (lambda e=encoder: [e.embed(b) for b in batches]) for name, encoder in encoders.items()},
                                "openvino, flip (two passes)": lambda: [flip(b) for b in batches]})
    detector = median_rounds({name: (lambda e=encoder: [e.detect(image) for image in images])
                              for name, encoder in encoders.items()}, rounds=3)
    result = {"images": len(paths), "faces": len(aligned),
              "runtimes": {name: encoder.runtime.as_dict() for name, encoder in encoders.items()},
              "recogniser_ms_per_crop": {name: 1000 * s / len(aligned) for name, s in recogniser.items()},
              "detector_ms_per_image": {name: 1000 * s / len(images) for name, s in detector.items()},
              "fidelity": {}}
    embedding_reference = np.concatenate([e for e, _ in outputs["onnxruntime fp32"]])
    feature_reference = np.concatenate([f for _, f in outputs["onnxruntime fp32"]])
    for name in encoders:
        if name == "onnxruntime fp32":
            continue
        embedding = cosines(np.concatenate([e for e, _ in outputs[name]]), embedding_reference)
        features = cosines(np.concatenate([f for _, f in outputs[name]]), feature_reference)
        shifts = [np.linalg.norm(a.landmarks - b.landmarks, axis=1).max()
                  for faces, reference_faces in zip(detections[name], detections["onnxruntime fp32"])
                  for a, b in zip(faces, reference_faces)]
        result["fidelity"][name] = {
            "embedding_cosine_mean": float(embedding.mean()), "embedding_cosine_p1": float(np.percentile(embedding, 1)),
            "feature_cosine_mean": float(features.mean()), "feature_cosine_p1": float(np.percentile(features, 1)),
            "landmark_shift_px_median": float(np.median(shifts)), "landmark_shift_px_max": float(np.max(shifts)),
            "faces_found": sum(map(len, detections[name])), "faces_found_onnxruntime": sum(map(len, detections["onnxruntime fp32"])),
        }
    return result


def layouts(paths: list[Path]) -> dict[str, float]:
    """images/s of the default encoder with (detector threads, recogniser threads) set apart."""
    def encoder_with(detector_threads, recogniser_threads):
        encoder = FaceEncoder(threads=recogniser_threads)
        encoder.detector = load_model("detector", backend=encoder.runtime.backend, threads=detector_threads)
        return encoder

    chosen = {f"detector {d or 'default'}, recogniser {r or 'default'}": encoder_with(d, r)
              for d, r in [(None, None), (1, 2), (1, 1), (2, 2), (1, None)]}
    for encoder in chosen.values():
        list(encoder.encode_batch(paths[:16]))  # warm-up: one detector session per input size
    seconds = median_rounds({name: (lambda e=encoder: list(e.encode_batch(paths))) for name, encoder in chosen.items()}, 3)
    return {name: len(paths) / s for name, s in seconds.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="threads per model for the runtime comparison")
    args = parser.parse_args(argv)
    result = {}
    for name, (paths, _) in data_sets(args.data, args.count).items():
        result[name] = measure(paths, args.threads)
        result[name]["layouts_images_per_s"] = layouts(paths)
        print(name, "done", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
