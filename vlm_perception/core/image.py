"""
Image conversion to the one format the engine takes: an HxWx3 uint8 RGB numpy array.

``from_raw`` reads the bytes of a ``sensor_msgs/Image`` (any row padding), ``decode_compressed``
those of a ``sensor_msgs/CompressedImage`` or an image file, ``to_rgb`` converts grey, RGBA,
16-bit and float arrays. Everything that cannot be used raises ``InputError``.
"""

import os

import numpy as np

from vlm_perception.core.errors import InputError

# encoding -> (channels, bytes per channel, channel order to reach RGB(A), or None for grey)
ENCODINGS = {
    'rgb8': (3, 1, None), 'bgr8': (3, 1, 'reverse'), 'rgba8': (4, 1, None),
    'bgra8': (4, 1, 'bgra'), 'mono8': (1, 1, None), '8UC1': (1, 1, None),
    'rgb16': (3, 2, None), 'bgr16': (3, 2, 'reverse'), 'rgba16': (4, 2, None),
    'bgra16': (4, 2, 'bgra'), 'mono16': (1, 2, None), '16UC1': (1, 2, None),
}
_BGRA_TO_RGBA = [2, 1, 0, 3]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """
    Return an HxWx3 uint8 RGB array; the input itself when it already is one.

    Grey (HxW or HxWx1) is repeated to three channels, the alpha of RGBA is dropped, 16-bit is
    scaled to 8 bits, float is read as 0..1 (NaN as 0), bool as 0/1. Anything else is an
    InputError.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f'image must be a numpy array, not {type(image).__name__}')
    if image.size == 0:
        raise InputError(f'image is empty (shape {image.shape})')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f'image shape {image.shape} is not HxW, HxWx1, HxWx3 or HxWx4')
    image = _to_uint8(image)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return image[:, :, :3]
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        scaled = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise InputError(f'image dtype {image.dtype} is not supported (uint8, uint16, float, bool)')


def from_raw(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
             encoding: str, step: int, is_bigendian: bool = False) -> np.ndarray:
    """
    Return the RGB uint8 image held in raw ``sensor_msgs/Image`` bytes.

    ``step`` is the length of one row in bytes (it may include padding). For rgb8 and bgr8 the
    result is a view of ``data`` (no copy); other encodings are converted.
    """
    if encoding not in ENCODINGS:
        raise InputError(
            f"image encoding '{encoding}' is not supported ({', '.join(sorted(ENCODINGS))})")
    channels, depth, order = ENCODINGS[encoding]
    pixels = raw_pixels(data, height, width, channels, np.dtype(np.uint8 if depth == 1 else 'u2'),
                        step, is_bigendian, encoding)
    if depth == 2:
        pixels = pixels.astype(np.uint16)  # native byte order
    if order == 'reverse':
        pixels = pixels[:, :, ::-1]
    elif order == 'bgra':
        pixels = pixels[:, :, _BGRA_TO_RGBA]
    return to_rgb(pixels)


def raw_pixels(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
               channels: int, dtype: np.dtype, step: int, is_bigendian: bool,
               encoding: str) -> np.ndarray:
    """
    Return the (H, W, channels) pixels of raw image bytes with rows of ``step`` bytes.

    The result views ``data`` where it can (one-byte pixels); wider pixels take the byte order
    of ``is_bigendian``. Sizes that do not fit are an InputError naming ``encoding``.
    """
    if height <= 0 or width <= 0:
        raise InputError(f'image is empty ({width}x{height})')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise InputError(f'image step {step} is shorter than a row of {width} {encoding} pixels '
                         f'({row_bytes} bytes)')
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    if buffer.size < step * height:
        raise InputError(f'image data has {buffer.size} bytes, {encoding} {width}x{height} with '
                         f'step {step} needs {step * height}')
    rows = buffer[:step * height].reshape(height, step)[:, :row_bytes]
    if dtype.itemsize > 1:
        rows = np.ascontiguousarray(rows).view(dtype.newbyteorder('>' if is_bigendian else '<'))
    return rows.reshape(height, width, channels)


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG/... bytes (a CompressedImage's data, an image file) to RGB uint8."""
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    if buffer.size == 0:
        raise InputError('compressed image data is empty')
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise InputError('compressed image data could not be decoded (not an image format '
                         'OpenCV reads)')
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return to_rgb(decoded)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8; a missing or unreadable file is an InputError."""
    try:
        with open(path, 'rb') as image_file:
            data = image_file.read()
    except OSError as error:
        raise InputError(f"cannot read image '{path}': {error.strerror or error}") from error
    try:
        return decode_compressed(data)
    except InputError as error:
        raise InputError(f"cannot read image '{path}': {error}") from error
