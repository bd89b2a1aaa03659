"""One image as the models see it: validated RGB pixels plus each model's encoding of them."""

import math
from typing import Any, Callable, TYPE_CHECKING, Union

import numpy as np

from vlm_perception.core.image import to_rgb
from vlm_perception.core.types import Detection

if TYPE_CHECKING:  # torch is imported where a tensor is made, not with this module
    import torch

# An image as encoders take it: an HxWx3 uint8 RGB array, or a 3xHxW uint8 tensor (Frame.tensor).
RGBImage = Union[np.ndarray, 'torch.Tensor']


def image_size(image: RGBImage) -> tuple[int, int]:
    """Return (height, width) of an HxWx3 array or a 3xHxW tensor."""
    height, width = image.shape[:2] if isinstance(image, np.ndarray) else image.shape[-2:]
    return int(height), int(width)


def to_tensor(image: RGBImage, device: Any) -> 'torch.Tensor':
    """
    Return an image as a 3xHxW uint8 tensor on a device; a tensor is only moved there.

    On the CPU the tensor shares the array's memory; to CUDA it is copied through pinned memory
    without blocking (later work on the device's stream waits for the copy, the host does not).
    """
    import torch

    if isinstance(image, torch.Tensor):
        return image.to(device)
    device = torch.device(device)
    pixels = torch.from_numpy(image)  # (H, W, 3)
    if device.type == 'cuda':
        pixels = pixels.pin_memory().to(device, non_blocking=True)
    elif device.type != 'cpu':
        pixels = pixels.to(device)
    return pixels.permute(2, 0, 1)  # (3, H, W), a view: the upload was of contiguous rows


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
        self._tensors: dict[str, Any] = {}  # str(device) -> the image as a (3, H, W) tensor there

    def has_encoding(self, model_key: str) -> bool:
        """Whether one model's encoding of this frame is kept (a batch encodes only the rest)."""
        return model_key in self._encodings

    def encoding(self, model_key: str, encode: Callable[[RGBImage], Any],
                 device: Any = None) -> Any:
        """
        Return this frame's encoding by one model, computing it on first request.

        With a device, encode gets the frame as the 3xHxW uint8 tensor there (``tensor``), else
        the HxWx3 array.
        """
        if model_key not in self._encodings:
            self._encodings[model_key] = encode(
                self.image if device is None else self.tensor(device))
        return self._encodings[model_key]

    def tensor(self, device: Any = 'cpu') -> 'torch.Tensor':
        """
        Return the image as a 3xHxW uint8 tensor on a device, uploaded once for every model there.

        The CPU one shares the array's memory; to CUDA it goes through pinned memory (to_tensor).
        """
        import torch

        key = str(torch.device(device))
        if key not in self._tensors:
            self._tensors[key] = to_tensor(self.image, device)
        return self._tensors[key]

    def drop_encodings(self) -> None:
        """Forget every encoding of the frame (done when a model ran out of memory on it)."""
        self._encodings.clear()
        self._tensors.clear()  # device copies too; the CPU one is a view, made again for free

    def crop(self, detection: Detection) -> np.ndarray:
        """Return the pixels inside a detection's box (at least one pixel)."""
        x0, y0, x1, y1 = detection.box
        left = min(max(int(math.floor(x0)), 0), self.width - 1)
        top = min(max(int(math.floor(y0)), 0), self.height - 1)
        right = max(min(int(math.ceil(x1)), self.width), left + 1)
        bottom = max(min(int(math.ceil(y1)), self.height), top + 1)
        return np.ascontiguousarray(self.image[top:bottom, left:right])
