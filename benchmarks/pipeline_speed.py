"""Speed of the face pipeline, stage by stage, on real images.

    python benchmarks/pipeline_speed.py --images ../shared/data/utkface/images --count 500
    python benchmarks/pipeline_speed.py --images ../shared/data/fgnet/images --count 495

Reports images/s for decoding, faces/s for detection + alignment and for the recogniser
(identity embedding plus descriptor, with and without flip averaging, and insightface's own
`ArcFaceONNX.get_feat` on the untouched model file for comparison), and images/s end to
end through `FaceEncoder.encode_batch`. The encoder runs once as warm-up on 16 images; the recogniser variants are timed in 5
interleaved rounds and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from agestimate.descriptors import DEFAULT_DESCRIPTOR, DescriptorModel
from agestimate.faces import FaceEncoder
from agestimate.images import load_image
from agestimate.models import load_model


def timed(function, *args):
    began = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    paths = sorted(Path(args.images).iterdir())[: args.count]
    encoder = FaceEncoder(threads=args.threads)
    plain = DescriptorModel(DEFAULT_DESCRIPTOR.removesuffix("+flip"), threads=args.threads)
    list(encoder.encode_batch(paths[:16]))  # warm-up

    images, decode_seconds = timed(lambda: [load_image(p) for p in paths])
    detections, detect_seconds = timed(lambda: [encoder.detect(image) for image in images])
    aligned, align_seconds = timed(lambda: np.concatenate([encoder.align(i, d) for i, d in zip(images, detections)]))
    faces = len(aligned)
    batches = [aligned[i:i + args.batch_size] for i in range(0, faces, args.batch_size)]
    # insightface's own ArcFaceONNX over the untouched file: the cost of the extra outputs.
    # The three recogniser variants are interleaved, 5 rounds, median: this machine is noisy.
    arcface = load_model("recognizer", threads=args.threads)
    bgr_batches = [[crop[:, :, ::-1] for crop in batch] for batch in batches]
    rounds = [[timed(lambda: [run(batch) for batch in chosen])[1] for run, chosen in
               ((encoder.embed, batches), (plain, batches), (arcface.get_feat, bgr_batches))] for _ in range(5)]
    flip_seconds, plain_seconds, arcface_seconds = np.median(np.array(rounds), axis=0)
    _, end_to_end = timed(lambda: list(encoder.encode_batch(paths, batch_size=args.batch_size)))
    result = {
        "images": len(paths), "faces": faces, "descriptor": DEFAULT_DESCRIPTOR,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "decode_images_per_s": round(len(paths) / decode_seconds, 1),
        "detect_align_faces_per_s": round(faces / (detect_seconds + align_seconds), 1),
        "detect_images_per_s": round(len(paths) / detect_seconds, 1),
        "recogniser_flip_faces_per_s": round(faces / flip_seconds, 1),
        "recogniser_no_flip_faces_per_s": round(faces / plain_seconds, 1),
        "insightface_arcface_faces_per_s": round(faces / arcface_seconds, 1),
        "end_to_end_images_per_s": round(len(paths) / end_to_end, 1),
        "end_to_end_faces_per_s": round(faces / end_to_end, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
