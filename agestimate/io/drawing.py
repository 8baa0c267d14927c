"""Annotated images: face boxes with "age (interval), gender #track" labels, drawn with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agestimate.errors import AgestimateError

COLOURS = {"male": (66, 135, 245), "female": (245, 66, 170)}  # RGB


def draw_faces(image: np.ndarray, faces) -> np.ndarray:
    """A copy of the RGB `image` with each face's box and label drawn on it: "31 (25-38), M", and
    " #2" for a face of track 2 (the interval is left out where a model has none, the gender
    where the model predicts none)."""
    canvas = np.ascontiguousarray(image.copy())
    scale = max(0.4, min(canvas.shape[:2]) / 900)
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = COLOURS.get(face.gender, (255, 255, 0))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, max(1, int(2 * scale)))
        low, high = face.age_interval
        interval = f" ({low:.0f}-{high:.0f})" if np.isfinite([low, high]).all() else ""
        gender = "" if face.gender is None else f", {face.gender[0].upper()}"
        track = f" #{face.track}" if face.track is not None else ""
        label = f"{face.age:.0f}{interval}{gender}{track}"
        (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y1 - height - baseline - 2)
        cv2.rectangle(canvas, (x1, top), (x1 + width + 2, top + height + baseline + 2), colour, -1)
        cv2.putText(canvas, label, (x1 + 1, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB image; the format follows the suffix. Creates the folder; raises if OpenCV cannot write it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise AgestimateError(f"{path}: cannot write the annotated image (unknown format or unwritable folder)")
