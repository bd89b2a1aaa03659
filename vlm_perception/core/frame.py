"""One image as the models see it: validated RGB pixels plus each model's encoding of them."""

import math
import sys
from typing import Any, Callable, Optional, TYPE_CHECKING, Union

import numpy as np

from vlm_perception.core.errors import InputError
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


def _torch() -> Any:
    import torch

    return torch


def _is_tensor(image: Any) -> bool:
    """Whether image is a torch tensor (torch imported only if something made one already)."""
    torch = sys.modules.get('torch')
    return torch is not None and isinstance(image, torch.Tensor)


def _on(tensor: 'torch.Tensor', device: 'torch.device') -> bool:
    """Whether tensor is on device; 'cuda' without an index means the current CUDA device."""
    if tensor.device.type != device.type:
        return False
    index = device.index
    if index is None and device.type == 'cuda':
        index = _torch().cuda.current_device()
    return index is None or tensor.device.index == index


def host_array(image: RGBImage) -> np.ndarray:
    """Return an image as an HxWx3 C-contiguous array: an array as it is, a tensor copied."""
    if isinstance(image, np.ndarray):
        return image
    return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())


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

    def __init__(self, image: RGBImage) -> None:
        """
        Validate and convert an array (see image.to_rgb), kept C-contiguous; or take a tensor.

        A 3xHxW uint8 tensor (a frame decoded on the GPU) stays where it is, as the frame's
        tensor there; the array is made from it only when asked for (``image``).
        """
        self._source: Optional['torch.Tensor'] = None
        self._image: Optional[np.ndarray] = None
        if _is_tensor(image):
            if image.dtype != _torch().uint8 or image.ndim != 3 or image.shape[0] != 3 \
                    or image.numel() == 0:
                raise InputError(f'an image tensor must be 3xHxW uint8, not {image.dtype} of '
                                 f'shape {tuple(image.shape)}')
            self._source = image
        else:
            self._image = np.ascontiguousarray(to_rgb(image))
        self.height, self.width = image_size(image)
        self._encodings: dict[str, Any] = {}
        self._tensors: dict[str, Any] = {}  # str(device) -> the image as a (3, H, W) tensor there

    @property
    def image(self) -> np.ndarray:
        """Return the HxWx3 uint8 RGB array (copied from the device once, for a tensor frame)."""
        if self._image is None:
            self._image = host_array(self._source)
        return self._image

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
        A tensor frame is its own tensor on its device, and is copied from there to others.
        """
        torch = _torch()
        device = torch.device(device)
        if self._source is not None and _on(self._source, device):
            return self._source
        key = str(device)
        if key not in self._tensors:
            self._tensors[key] = to_tensor(
                self._source if self._source is not None else self.image, device)
        return self._tensors[key]

    def drop_encodings(self) -> None:
        """Forget every encoding of the frame (done when a model ran out of memory on it)."""
        self._encodings.clear()
        self._tensors.clear()  # copies elsewhere too; the CPU one is a view, made again for free

    def crop(self, detection: Detection) -> np.ndarray:
        """Return the pixels inside a detection's box (at least one pixel)."""
        x0, y0, x1, y1 = detection.box
        left = min(max(int(math.floor(x0)), 0), self.width - 1)
        top = min(max(int(math.floor(y0)), 0), self.height - 1)
        right = max(min(int(math.ceil(x1)), self.width), left + 1)
        bottom = max(min(int(math.ceil(y1)), self.height), top + 1)
        return np.ascontiguousarray(self.image[top:bottom, left:right])
