"""Does the recogniser see age better in larger crops? `grid509` at other input sizes.

    python benchmarks/input_size.py --store utk.store --sizes 112,160,224,112+224

The UTKFace faces of the store (train, val, test) are aligned again from their image and
landmarks at each size (the ArcFace template scaled by size/112, as insightface's norm_crop
does for 224), run through the recogniser up to tensor 509 on the default backend and pooled
on the 2x2 grid (at 112 this is the store's `grid509`). Heads with the shipped `HeadOptions`
are trained on the train split, the epoch chosen on val; "112+224" concatenates both sizes.
One JSON line per size with val and test metrics.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from agestimate.evaluation.metrics import summary
from agestimate.faces.descriptors import BRANCH_POOLED, recogniser_input
from agestimate.heads.model import gender_codes
from agestimate.io.images import load_image
from agestimate.runtime.registry import weight_path
from agestimate.runtime.sessions import open_session
from agestimate.store.store import EmbeddingStore
from agestimate.training.fit import fit_heads

SPLITS = ("train", "val", "test")


def grid509_model(size: int) -> bytes:
    """The recogniser up to tensor 509 (512 x size/16 x size/16) with spatial input dims left
    free, average-pooled on a 2x2 grid (overlapping by one row/column when the side is odd)."""
    import onnx
    import onnx.utils

    recogniser = onnx.load(str(weight_path("recognizer")))
    cut = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(recogniser)).extract_model(
        [recogniser.graph.input[0].name], [BRANCH_POOLED])
    del cut.graph.value_info[:]
    for dimension in cut.graph.input[0].type.tensor_type.shape.dim[2:]:
        dimension.dim_param = "side"
    side = size // 16
    half = side // 2
    cut.graph.node.append(onnx.helper.make_node("AveragePool", [BRANCH_POOLED], ["grid"], kernel_shape=[half + side % 2] * 2,
                                                strides=[half] * 2))
    cut.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, None))
    return cut.SerializeToString()


def aligned_at(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    import cv2
    from insightface.utils.face_align import arcface_dst
    from skimage.transform import SimilarityTransform

    transform = SimilarityTransform.from_estimate(landmarks, arcface_dst * size / 112)
    return cv2.warpAffine(image, transform.params[:2], (size, size), borderValue=0.0)


def features_at(records, size: int, batch_size: int = 32) -> np.ndarray:
    session = open_session(grid509_model(size))
    name = session.get_inputs()[0].name
    batches = []
    for start in range(0, len(records.path), batch_size):
        crops = np.stack([aligned_at(load_image(path), points, size) for path, points in
                          zip(records.path[start:start + batch_size], records.landmarks[start:start + batch_size])])
        batches.append(session.run(["grid"], {name: recogniser_input(crops, size)})[0].reshape(len(crops), -1))
    return np.concatenate(batches)


def metrics(fitted, features, age, gender, keys=("mae", "cs5", "mae_60plus", "gender_accuracy")) -> dict:
    """The `keys` of `agestimate.evaluation.metrics.summary` for the heads `fitted` on `features`, rounded."""
    predicted = fitted.predict(features)
    result = summary(age, predicted["age"], gender_true=gender, gender_pred=gender_codes(predicted["prob_female"]))
    return {key: round(result[key], 4) for key in keys}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a store of UTKFace with its labels.csv splits")
    parser.add_argument("--sizes", default="112,160,224,112+224", help="crop sides; '+' joins sizes into one feature vector")
    args = parser.parse_args(argv)
    with EmbeddingStore(args.store) as db:
        records = {split: db.faces(split=split, labelled=True, primary=True, descriptor="emb") for split in SPLITS}
    features: dict[int, dict] = {}
    for spec in args.sizes.split(","):
        sizes = [int(size) for size in spec.split("+")]
        started = time.perf_counter()
        for size in sizes:
            if size not in features:
                features[size] = {split: features_at(records[split], size) for split in SPLITS}
        joined = {split: np.concatenate([features[size][split] for size in sizes], axis=1) for split in SPLITS}
        fitted = fit_heads(joined["train"], records["train"].age, records["train"].gender,
                           joined["val"], records["val"].age, records["val"].gender)
        result = {"sizes": spec, "best_epoch": fitted.best_epoch, "seconds": round(time.perf_counter() - started)}
        for split in ("val", "test"):
            result[split] = metrics(fitted, joined[split], records[split].age, records[split].gender)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
