"""A task branch of the recogniser: its last stage, copied and fine-tuned for age and gender.

The recogniser (w600k_mbf) is split at tensor ``473`` (end of stage 3, 256x14x14). The trunk
before it stays frozen and shared with the identity embedding; the branch is a copy of what
follows, up to tensor ``509`` (512x7x7), pooled on the 2x2 grid like the ``grid509`` block.
It is trained together with EVR and gender heads on the trunk's maps, which are computed once
per crop and per augmented view (flip, crop jitter, colour, blur, downscaling, grayscale,
JPEG) and cached on disk, so an epoch costs only the branch. The branch is exported to ONNX and
becomes the descriptor block ``adapted`` (`agestimate.faces.descriptors`), which prediction computes
in the same recogniser pass.

    agestimate embed ../shared/data/utkface/images --labels ../shared/data/utkface/labels.csv --store utk.store
    python -m agestimate.training.branch --store utk.store --work branch.work --out agestimate/weights/branches/adapted.onnx

The stores give the labelled faces and their landmarks (any descriptor will do). The branch
learns from the train splits of the stores given (``--store`` repeated: UTKFace, AAF, LFW; a face
without an age trains only the gender head), its epoch chosen on their val splits; FG-NET is never
given, so that its people stay unseen by it for the person-fold numbers of the heads trained on
top. ``--start`` fine-tunes an existing branch instead of the pretrained stage. The shipped
branch learnt from UTKFace alone (BENCHMARKS.md, issue 28: one trained on all three sets was
not better overall). The file is pinned by SHA-256 in `agestimate.runtime.registry.REGISTRY`: a
new branch needs the new pin (printed at the end), new int8 models
(`agestimate.training.quantize`, which contain the branch), and stores embedded with the old
one must be embedded again before the heads are retrained (`agestimate.training.default_model`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from agestimate.errors import StoreError
from agestimate.evaluation.metrics import gender_accuracy
from agestimate.faces.descriptors import BRANCH_INPUT, BRANCH_POOLED, recogniser_input
from agestimate.faces.encoder import ALIGNED_SIZE, aligned_crop
from agestimate.heads.model import gender_codes
from agestimate.io.images import load_image
from agestimate.runtime.registry import file_sha256, weight_path
from agestimate.runtime.sessions import open_session
from agestimate.store.store import EmbeddingStore, FaceRecords

from .export import write_onnx
from .fit import _predict, resolve_device
from .heads import AgeGenderNet, joint_loss

logger = logging.getLogger(__name__)

MAP_SHAPE = (256, 14, 14)  # tensor 473
VIEWS = 4  # view 0: the crop itself; views 1..3: augmented copies


# -- the branch as a torch module ------------------------------------------------------------------

def branch_nodes(recogniser, start: str = BRANCH_INPUT, end: str = BRANCH_POOLED):
    """The recogniser's nodes computing `end` from `start`, in graph order (Conv, PRelu, Add)."""
    nodes, known = [], {start}
    for node in recogniser.graph.node:
        if any(name in known for name in node.input):
            nodes.append(node)
            known.update(node.output)
        if end in node.output:
            return nodes
    raise ValueError(f"tensor {end!r} does not follow {start!r} in the recogniser")


class RecogniserBranch(nn.Module):
    """The recogniser's nodes from `BRANCH_INPUT` to `BRANCH_POOLED` as torch layers, with the
    pretrained weights, then the 2x2 grid pooling of ``grid509``: (b, 256, 14, 14) -> (b, 2048)."""

    def __init__(self, recogniser):
        super().__init__()
        import onnx.numpy_helper

        weights = {tensor.name: torch.from_numpy(onnx.numpy_helper.to_array(tensor).copy())
                   for tensor in recogniser.graph.initializer}
        self.steps, layers = [], nn.ModuleList()
        for node in branch_nodes(recogniser):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                weight, bias = weights[node.input[1]], weights[node.input[2]]
                layer = nn.Conv2d(weight.shape[1] * attributes.get("group", 1), weight.shape[0], weight.shape[2:],
                                  stride=attributes.get("strides", [1, 1]), padding=attributes.get("pads", [0] * 4)[:2],
                                  groups=attributes.get("group", 1))
                layer.weight.data.copy_(weight)
                layer.bias.data.copy_(bias)
            elif node.op_type == "PRelu":
                slope = weights[node.input[1]].reshape(-1)
                layer = nn.PReLU(len(slope))
                layer.weight.data.copy_(slope)
            elif node.op_type == "Add":
                layer = None
            else:
                raise ValueError(f"branch node {node.name} has an operation the branch does not handle: {node.op_type}")
            inputs = [name for name in node.input if name not in weights]
            self.steps.append((len(layers) if layer is not None else None, inputs, node.output[0]))
            if layer is not None:
                layers.append(layer)
        self.layers = layers
        self.pool = nn.AvgPool2d(kernel_size=4, stride=3)  # 7x7 -> 2x2, as the grid509 block

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        tensors = {BRANCH_INPUT: maps}
        for layer, inputs, output in self.steps:
            tensors[output] = (tensors[inputs[0]] + tensors[inputs[1]] if layer is None
                               else self.layers[layer](tensors[inputs[0]]))
        return self.pool(tensors[BRANCH_POOLED]).flatten(1)


def load_branch(path) -> RecogniserBranch:
    """The branch of an ONNX file written by `export_branch`: the recogniser's layers with that
    file's weights (its Conv and PRelu nodes, in order), to fine-tune further."""
    import onnx
    import onnx.numpy_helper

    branch = RecogniserBranch(onnx.load(str(weight_path("recognizer"))))
    graph = onnx.load(str(path)).graph
    values = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    values.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                   for node in graph.node if node.op_type == "Constant"})
    nodes = [node for node in graph.node if node.op_type in ("Conv", "PRelu")]
    if len(nodes) != len(branch.layers):
        raise ValueError(f"{path}: {len(nodes)} Conv and PRelu nodes, the branch has {len(branch.layers)} layers")
    for layer, node in zip(branch.layers, nodes):
        parameters = [layer.weight] + ([layer.bias] if node.op_type == "Conv" else [])
        for parameter, name in zip(parameters, node.input[1:]):
            parameter.data.copy_(torch.from_numpy(values[name].reshape(parameter.shape).copy()))
    return branch


def export_branch(branch: RecogniserBranch, path) -> Path:
    """Write the branch as ONNX: input "maps" (n, 256, 14, 14), the recogniser's `BRANCH_INPUT`,
    output "features" (n, 2048)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_onnx(copy.deepcopy(branch).cpu().eval(), torch.zeros(1, *MAP_SHAPE), path, ["maps"], ["features"])
    return path


# -- crops, augmented views and cached trunk maps -------------------------------------------------

def aligned_crops(paths, landmarks) -> np.ndarray:
    """ArcFace-aligned 112x112 RGB crops of faces given by image path and five landmarks."""
    return np.stack([aligned_crop(load_image(path), points) for path, points in zip(paths, landmarks)])


def augmented(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random view of an aligned RGB crop: mirror, small shift/scale/rotation, colour, and the
    degradations of photos outside UTKFace (blur, small faces upscaled, grayscale, JPEG)."""
    view = crop[:, ::-1] if rng.random() < 0.5 else crop
    if rng.random() < 0.7:
        centre = ALIGNED_SIZE / 2
        matrix = cv2.getRotationMatrix2D((centre + rng.uniform(-4, 4), centre + rng.uniform(-4, 4)), rng.uniform(-8, 8),
                                         rng.uniform(0.92, 1.08))
        view = cv2.warpAffine(np.ascontiguousarray(view), matrix, (ALIGNED_SIZE,) * 2, borderMode=cv2.BORDER_REFLECT)
    view = view.astype(np.float32)
    if rng.random() < 0.5:
        gray = view.mean(axis=2, keepdims=True)
        view = (view - gray) * rng.uniform(0.6, 1.4) + gray  # saturation
        view = (view - view.mean()) * rng.uniform(0.7, 1.3) + view.mean() + rng.uniform(-25, 25)  # contrast, brightness
    if rng.random() < 0.15:
        view = np.repeat(view.mean(axis=2, keepdims=True), 3, axis=2)
    view = np.clip(view, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        side = int(rng.integers(24, 64))
        view = cv2.resize(cv2.resize(view, (side, side), interpolation=cv2.INTER_AREA), (ALIGNED_SIZE,) * 2,
                          interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:
        view = cv2.GaussianBlur(view, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        _, encoded = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 70))])
        view = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(view)


def trunk_model(recogniser) -> bytes:
    """The recogniser cut at `BRANCH_INPUT`: aligned crops in, the trunk's maps out."""
    import onnx.utils

    inferred = onnx.shape_inference.infer_shapes(recogniser)
    return onnx.utils.Extractor(inferred).extract_model([recogniser.graph.input[0].name], [BRANCH_INPUT]).SerializeToString()


def trunk_maps(session, crops: np.ndarray, out: np.ndarray, batch_size: int = 64) -> None:
    """Run the trunk over RGB crops (n, 112, 112, 3) into `out` (n, 256, 14, 14), float16."""
    name = session.get_inputs()[0].name
    for start in range(0, len(crops), batch_size):
        blob = recogniser_input(crops[start:start + batch_size])
        out[start:start + len(blob)] = session.run([BRANCH_INPUT], {name: blob})[0].astype(np.float16)


def prepare(stores, work, *, seed: int = 0, precision: str = "auto") -> dict:
    """Crops of the labelled faces of the train and val splits of `stores` (a path or a list)
    and the trunk's maps of every view, cached in `work`.

    The train split gets `VIEWS` views (the crop and augmented copies), val one. A face may
    have an age, a gender or both (NaN, -1 where unknown). Done once; a second call finds the
    files and returns their description.
    """
    import onnx

    stores = [str(stores)] if isinstance(stores, (str, Path)) else [str(store) for store in stores]
    work = Path(work)
    manifest = work / "manifest.json"
    if manifest.exists():
        description = json.loads(manifest.read_text())
        if description["stores"] != stores:
            raise ValueError(f"{work} holds the maps of the stores {description['stores']}, not {stores}; use another folder")
        return description
    work.mkdir(parents=True, exist_ok=True)
    session = open_session(trunk_model(onnx.load(str(weight_path("recognizer")))), precision=precision)
    rng = np.random.default_rng(seed)
    description = {"stores": stores, "views": VIEWS, "seed": seed, "splits": {}}
    for split in ("train", "val"):
        parts = []
        for store in stores:
            with EmbeddingStore(store) as db:
                parts.append(db.faces(split=split, labelled=True, primary=True, descriptor="emb"))
            if not len(parts[-1]):
                raise StoreError(f"{store}: no labelled faces in the {split} split; the branch learns from stores "
                                 "with train and val splits (as UTKFace's labels.csv gives)")
        records = FaceRecords.concatenate(parts)
        source = np.concatenate([np.full(len(part), i) for i, part in enumerate(parts)])
        started = time.perf_counter()
        crops = aligned_crops(records.path, records.landmarks)
        views = VIEWS if split == "train" else 1
        maps = np.lib.format.open_memmap(work / f"{split}.npy", "w+", np.float16, (views, len(crops), *MAP_SHAPE))
        for view in range(views):
            trunk_maps(session, crops if view == 0 else np.stack([augmented(c, rng) for c in crops]), maps[view])
        maps.flush()
        np.savez(work / f"{split}_labels.npz", age=records.age, gender=records.gender, face_id=records.face_id,
                 source=source)
        description["splits"][split] = {"faces": len(crops), "faces_per_store": np.bincount(source).tolist(),
                                        "views": views, "seconds": round(time.perf_counter() - started, 1)}
        logger.info("%s: %s", split, description["splits"][split])
    manifest.write_text(json.dumps(description, indent=2))
    return description


# -- training ---------------------------------------------------------------------------------------

class BranchWithHeads(nn.Module):
    """The branch and age/gender heads over it, trained as one network on trunk maps."""

    def __init__(self, branch: RecogniserBranch, heads: AgeGenderNet):
        super().__init__()
        self.branch, self.heads = branch, heads
        self.max_age = heads.max_age

    def forward(self, maps):
        return self.heads(self.branch(maps.float()))


@torch.no_grad()
def branch_features(branch: nn.Module, maps: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The branch's features (n, 2048) of trunk maps (n, 256, 14, 14), in batches."""
    branch.eval()
    return torch.cat([branch(torch.from_numpy(np.array(maps[i:i + batch_size], np.float32)))
                      for i in range(0, len(maps), batch_size)]).numpy()


def fine_tune(work, *, epochs: int = 14, batch_size: int = 64, lr_branch: float = 1e-4, lr_heads: float = 1e-3,
              gender_weight: float = 1.0, max_age: int = 100, seed: int = 0, device=None, out=None, start=None) -> dict:
    """Train branch and heads (EVR + gender, the gender loss weighted by `gender_weight`) on the
    cached maps, from the pretrained recogniser's layers or from the branch file `start`; keep
    the epoch best on val MAE (written to `out` as ONNX when given)."""
    import onnx

    work = Path(work)
    device = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_maps, val_maps = np.load(work / "train.npy", mmap_mode="r"), np.load(work / "val.npy")[0]
    train_labels, val_labels = dict(np.load(work / "train_labels.npz")), dict(np.load(work / "val_labels.npz"))
    ages = np.minimum(train_labels["age"], max_age).astype(np.float32)
    genders = train_labels["gender"].astype(np.int64)

    branch = RecogniserBranch(onnx.load(str(weight_path("recognizer")))) if start is None else load_branch(start)
    start_features = branch_features(branch, train_maps[0])
    heads = AgeGenderNet(torch.from_numpy(start_features.mean(0)), torch.from_numpy(start_features.std(0).clip(1e-6)),
                         torch.zeros(1), max_age=max_age, use_rapl=False)
    model = BranchWithHeads(branch, heads).to(device)
    optimizer = torch.optim.AdamW([{"params": branch.parameters(), "lr": lr_branch},
                                   {"params": heads.parameters(), "lr": lr_heads}], weight_decay=1e-4)
    steps = epochs * (len(ages) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[lr_branch, lr_heads], total_steps=steps,
                                                    pct_start=0.1)
    history, best = [], (np.inf, None)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = rng.permutation(len(ages))
        views = rng.integers(0, train_maps.shape[0], len(ages))
        losses = []
        for batch in np.array_split(order, len(ages) // batch_size):
            batch = np.sort(batch)
            maps = torch.from_numpy(np.stack([train_maps[v, i] for v, i in zip(views[batch], batch)])).to(device)
            outputs = model(maps)
            loss, _ = joint_loss(outputs, torch.from_numpy(ages[batch]).to(device),
                                 torch.from_numpy(genders[batch]).to(device), None, lam=gender_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = _predict(model, val_maps, batch_size=256, device=device)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                  "val_mae": float(np.nanmean(np.abs(val["age"].numpy() - val_labels["age"]))),
                  "val_gender": gender_accuracy(val_labels["gender"], gender_codes(val["prob_female"].numpy())),
                  "seconds": round(time.perf_counter() - started, 1)}
        history.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        if record["val_mae"] < best[0]:
            best = (record["val_mae"], copy.deepcopy(model.branch).cpu())
            if out is not None:
                export_branch(best[1], out)
    return {"history": history, "best_val_mae": best[0], "branch": best[1]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, action="append",
                        help="a store with train/val/test split labels (UTKFace, AAF, LFW); repeat for several")
    parser.add_argument("--work", required=True, help="folder caching crops' trunk maps (about 7 GB for UTKFace)")
    parser.add_argument("--out", required=True, help="the branch's ONNX file")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--lr", type=float, default=1e-4, help="the branch's peak learning rate")
    parser.add_argument("--start", help="a branch file to fine-tune further (default: the pretrained recogniser's layers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(prepare(args.store, args.work)), file=sys.stderr)
    result = fine_tune(args.work, epochs=args.epochs, lr_branch=args.lr, out=args.out, start=args.start)
    print(json.dumps({"best_val_mae": result["best_val_mae"], "history": result["history"],
                      "sha256": file_sha256(args.out)}, indent=2))


if __name__ == "__main__":
    main()
