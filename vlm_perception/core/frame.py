"""One image as the models see it: validated RGB pixels plus each model's encoding of them."""

import math
from typing import Any, Callable

import numpy as np

from vlm_perception.core.image import to_rgb
from vlm_perception.core.types import Detection


class Frame:
    """
    One validated RGB image plus the image encodings models made of it.

    The encodings live on the frame and go with it: dropping the frame frees them.
    """

    def __init__(self, image: np.ndarray) -> None:
        """Validate and convert the image (see image.to_rgb); keep it C-contiguous."""
        self.image = np.ascontiguousarray(to_rgb(image))
        self.height, self.width = self.image.shape[:2]
        self._encodings: dict[str, Any] = {}

    def encoding(self, model_key: str, encode: Callable[[np.ndarray], Any]) -> Any:
        """Return this frame's encoding by one model, computing it on first request."""
        if model_key not in self._encodings:
            self._encodings[model_key] = encode(self.image)
        return self._encodings[model_key]

    def drop_encodings(self) -> None:
        """Forget every encoding of the frame (done when a model ran out of memory on it)."""
        self._encodings.clear()

    def crop(self, detection: Detection) -> np.ndarray:
        """Return the pixels inside a detection's box (at least one pixel)."""
        x0, y0, x1, y1 = detection.box
        left = min(max(int(math.floor(x0)), 0), self.width - 1)
        top = min(max(int(math.floor(y0)), 0), self.height - 1)
        right = max(min(int(math.ceil(x1)), self.width), left + 1)
        bottom = max(min(int(math.ceil(y1)), self.height), top + 1)
        return np.ascontiguousarray(self.image[top:bottom, left:right])
