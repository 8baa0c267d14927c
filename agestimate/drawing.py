"""Annotated images: face boxes with "age, gender" labels, drawn with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import AgestimateError

COLOURS = {"male": (66, 135, 245), "female": (245, 66, 170)}  # RGB


def draw_faces(image: np.ndarray, faces) -> np.ndarray:
    """A copy of the RGB `image` with each face's box and "age, gender" label drawn on it (the
    age alone where the model predicts no gender)."""
    canvas = np.ascontiguousarray(image.copy())
    scale = max(0.4, min(canvas.shape[:2]) / 900)
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = COLOURS.get(face.gender, (255, 255, 0))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, max(1, int(2 * scale)))
        label = f"{face.age:.0f}" if face.gender is None else f"{face.age:.0f}, {face.gender[0].upper()}"
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
