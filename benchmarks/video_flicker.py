"""Video flicker: how much one person's predicted age jumps from frame to frame, with and without
tracking and smoothing (`agestimate.predict_video(track=...)`), on synthetic clips made from
labelled UTKFace test photos.

    python benchmarks/video_flicker.py --data ../shared/data/utkface --out benchmarks/results/video_flicker.json

- Pan/zoom clips: one photo per clip, zoomed (1.6x-2.6x) and panned over a 640x480 canvas,
  written as MJPG (so every frame is re-encoded): one clip per photo, photos of true ages
  spread from 5 to 75.
- Crossing clip: two photos (a child and an older adult) moving towards each other on one
  line, the second passing in front of the first (hiding most of it), then apart.

For each person: the standard deviation of the predicted age over the frames where the face is
found, and the mean absolute error against the label, per frame (`track=False`) and tracked
and smoothed (`track=True`). A face is attributed to a person by the nearest true position;
an identity swap is a change of the track number attributed to one person.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from agestimate.apps.video import predict_video
from agestimate.estimator import Estimator
from agestimate.io.labels import read_labels_csv

SIZE = (640, 480)
FRAMES = 60
PAN_ZOOM_AGES = (5, 15, 25, 35, 45, 55, 65, 75)


def test_photos(data: Path) -> list[tuple[Path, float]]:
    """(path, age) of the UTKFace test split, sorted by file name."""
    labels = read_labels_csv(data / "labels.csv")
    return sorted(((path, float(label.age)) for path, label in labels.items() if label.split == "test"),
                  key=lambda item: item[0].name)


def pick(photos, age: float, used: set) -> tuple[Path, float]:
    """The first photo (by name) of the closest age not used yet."""
    best = min((abs(a - age), i) for i, (path, a) in enumerate(photos) if path not in used)[1]
    used.add(photos[best][0])
    return photos[best]


def place(canvas: np.ndarray, photo: np.ndarray, centre, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """`photo` scaled by `scale` and centred at `centre` on `canvas` (in place, over what is there);
    returns the canvas and the photo's box."""
    height, width = photo.shape[:2]
    matrix = np.array([[scale, 0, centre[0] - scale * width / 2], [0, scale, centre[1] - scale * height / 2]], np.float32)
    warped = cv2.warpAffine(photo, matrix, SIZE, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.full((height, width), 255, np.uint8), matrix, SIZE, flags=cv2.INTER_NEAREST)
    canvas[mask > 0] = warped[mask > 0]
    box = np.array([centre[0] - scale * width / 2, centre[1] - scale * height / 2,
                    centre[0] + scale * width / 2, centre[1] + scale * height / 2])
    return canvas, box


def write_clip(path: Path, frames) -> list:
    """Write (frame, boxes) pairs as MJPG; returns the true boxes per frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, SIZE)
    truth = []
    for frame, boxes in frames:
        writer.write(frame)
        truth.append(boxes)
    writer.release()
    return truth


def pan_zoom_frames(photo: np.ndarray):
    for i in range(FRAMES):
        phase = 2 * np.pi * i / FRAMES
        canvas = np.full((SIZE[1], SIZE[0], 3), 60, np.uint8)
        centre = (320 + 130 * np.sin(phase), 240 + 50 * np.sin(2 * phase))
        yield place(canvas, photo, centre, 2.1 + 0.5 * np.sin(3 * phase))[0], None


def crossing_frames(first: np.ndarray, second: np.ndarray):
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        canvas = np.full((SIZE[1], SIZE[0], 3), 60, np.uint8)
        canvas, box_a = place(canvas, first, (120 + 400 * t, 200), 1.2)
        canvas, box_b = place(canvas, second, (520 - 400 * t, 280), 1.2)  # drawn last: passes in front
        yield canvas, [box_a, box_b]


def attribute(faces, boxes: list[np.ndarray]) -> dict:
    """Person index -> face, each face given to the person whose true box centre is nearest,
    only where the face's centre lies inside that box."""
    result = {}
    for face in faces:
        centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        distances = [np.linalg.norm(centre - (box[:2] + box[2:]) / 2) for box in boxes]
        person = int(np.argmin(distances))
        box = boxes[person]
        if box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3] and person not in result:
            result[person] = face
    return result


def measure(clip: Path, estimator: Estimator, truth_boxes, ages, *, track: bool) -> list[dict]:
    per_person = [{"ages": [], "tracks": []} for _ in ages]
    began = time.perf_counter()
    frames = 0
    for frame in predict_video(clip, estimator, track=track):
        frames += 1
        boxes = truth_boxes[frame.frame]
        found = attribute(frame.faces, boxes) if boxes is not None else (
            {0: frame.faces[0]} if frame.faces else {})
        for person, face in found.items():
            per_person[person]["ages"].append(face.age)
            per_person[person]["tracks"].append(face.track)
    seconds = time.perf_counter() - began
    rows = []
    for person, (values, age) in enumerate(zip(per_person, ages)):
        predicted = np.array(values["ages"])
        tracks = values["tracks"]
        rows.append({
            "person": person, "true_age": age, "frames_found": len(predicted), "frames": frames,
            "age_std": float(predicted.std()) if len(predicted) else None,
            "mae": float(np.abs(predicted - age).mean()) if len(predicted) else None,
            "tracks": sorted({t for t in tracks if t is not None}),
            "track_changes": int(sum(a != b for a, b in zip(tracks, tracks[1:]))) if track else None,
            "frames_per_s": round(frames / seconds, 1),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the UTKFace folder (images/ and labels.csv)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    data = Path(args.data)
    photos = test_photos(data)
    used: set = set()
    single = [pick(photos, age, used) for age in PAN_ZOOM_AGES]
    pair = [pick(photos, 8, used), pick(photos, 60, used)]
    estimator = Estimator(args.model)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} CPUs", "model": args.model or "default", "frames_per_clip": FRAMES,
              "pan_zoom": [], "crossing": None}
    with tempfile.TemporaryDirectory() as folder:
        for path, age in single:
            clip = Path(folder) / f"{path.stem}.avi"
            truth = write_clip(clip, pan_zoom_frames(cv2.imread(str(path))))
            raw = measure(clip, estimator, truth, [age], track=False)[0]
            tracked = measure(clip, estimator, truth, [age], track=True)[0]
            result["pan_zoom"].append({"photo": path.name, "per_frame": raw, "tracked": tracked})
            print(f"{path.name}: age {age:.0f}, std {raw['age_std']:.2f} -> {tracked['age_std']:.2f}, "
                  f"MAE {raw['mae']:.2f} -> {tracked['mae']:.2f}, tracks {tracked['tracks']}", flush=True)
        clip = Path(folder) / "crossing.avi"
        truth = write_clip(clip, crossing_frames(*(cv2.imread(str(path)) for path, _ in pair)))
        ages = [age for _, age in pair]
        result["crossing"] = {"photos": [path.name for path, _ in pair],
                              "per_frame": measure(clip, estimator, truth, ages, track=False),
                              "tracked": measure(clip, estimator, truth, ages, track=True)}
    for row_raw, row_tracked in zip(result["crossing"]["per_frame"], result["crossing"]["tracked"]):
        print(f"crossing person {row_raw['person']} (age {row_raw['true_age']:.0f}): std {row_raw['age_std']:.2f} -> "
              f"{row_tracked['age_std']:.2f}, MAE {row_raw['mae']:.2f} -> {row_tracked['mae']:.2f}, "
              f"tracks {row_tracked['tracks']}, track changes {row_tracked['track_changes']}")
    raw_std = [clip["per_frame"]["age_std"] for clip in result["pan_zoom"]]
    tracked_std = [clip["tracked"]["age_std"] for clip in result["pan_zoom"]]
    result["summary"] = {
        "pan_zoom_median_std_per_frame": float(np.median(raw_std)),
        "pan_zoom_median_std_tracked": float(np.median(tracked_std)),
        "pan_zoom_std_ratio_median": float(np.median(np.array(tracked_std) / np.array(raw_std))),
        "pan_zoom_mae_per_frame": float(np.mean([clip["per_frame"]["mae"] for clip in result["pan_zoom"]])),
        "pan_zoom_mae_tracked": float(np.mean([clip["tracked"]["mae"] for clip in result["pan_zoom"]])),
        # a swap: one track number given to both people; a fragment: a person's extra track numbers
        "crossing_identity_swaps": len(set.intersection(*(set(row["tracks"]) for row in result["crossing"]["tracked"]))),
        "crossing_track_fragments": sum(max(len(row["tracks"]) - 1, 0) for row in result["crossing"]["tracked"]),
    }
    print(json.dumps(result["summary"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
