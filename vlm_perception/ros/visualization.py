"""Annotated image: detection boxes, labels with scores, and the caption drawn onto a copy."""

import hashlib
from typing import Sequence

import cv2
import numpy as np

from vlm_perception.core.types import Detection

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def label_colour(label: str) -> tuple[int, int, int]:
    """Return a stable RGB colour for a label (the same in every run)."""
    digest = hashlib.md5(label.encode('utf-8'), usedforsecurity=False).digest()
    return _PALETTE[digest[0] % len(_PALETTE)]


def _text_scale(width: int) -> float:
    return max(0.4, width / 1200)


def annotate(rgb: np.ndarray, detections: Sequence[Detection], caption: str = '') -> np.ndarray:
    """Return a copy of rgb (H, W, 3 uint8) with boxes, 'label score' tags and the caption."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    height, width = image.shape[:2]
    scale = _text_scale(width)
    thickness = max(1, round(scale * 2))
    for detection in detections:
        colour = label_colour(detection.label)
        x0, y0, x1, y1 = (round(v) for v in detection.box)
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness)
        text = f'{detection.label} {detection.score:.2f}'
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, 1)
        top = max(0, y0 - text_h - baseline - 2)
        cv2.rectangle(image, (x0, top), (x0 + text_w + 2, top + text_h + baseline + 2), colour, -1)
        cv2.putText(image, text, (x0 + 1, top + text_h + 1), _FONT, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    if caption:
        (text_w, text_h), baseline = cv2.getTextSize(caption, _FONT, scale, 1)
        band = text_h + baseline + 6
        image[height - band:] = (image[height - band:] * 0.4).astype(np.uint8)
        cv2.putText(image, caption, (4, height - baseline - 3), _FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return image
