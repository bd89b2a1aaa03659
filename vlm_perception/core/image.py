"""
Image conversion to the one format the engine takes: an HxWx3 uint8 RGB numpy array.

``from_raw`` reads the bytes of a ``sensor_msgs/Image`` (any row padding), ``decode_compressed``
those of a ``sensor_msgs/CompressedImage`` or an image file, ``to_rgb`` converts grey, RGBA,
16-bit and float arrays. Everything that cannot be used raises ``InputError``. On a CUDA device,
``DeviceJpegDecoder`` decodes JPEG on the GPU (nvjpeg) to a 3xHxW uint8 tensor that stays there.

Compressed images larger than ``MAX_IMAGE_SIDE`` / ``MAX_IMAGE_PIXELS`` are refused from the
size their header declares, before any pixel is decoded (``compressed_size``).
"""

import os
import re
import struct
from typing import Any, Callable, Optional, TYPE_CHECKING, Union

import numpy as np

from vlm_perception.core.errors import InputError

if TYPE_CHECKING:  # torch is imported where a tensor is made, not with this module
    import torch

MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
# OpenCV reads its own decode limit once, when cv2 is first imported: make it ours for the
# formats whose header is not read here (a value already in the environment wins).
os.environ.setdefault('OPENCV_IO_MAX_IMAGE_PIXELS', str(MAX_IMAGE_PIXELS))

# encoding -> (channels, bytes per channel, channel order to reach RGB(A), or None for grey)
ENCODINGS = {
    'rgb8': (3, 1, None), 'bgr8': (3, 1, 'reverse'), 'rgba8': (4, 1, None),
    'bgra8': (4, 1, 'bgra'), 'mono8': (1, 1, None), '8UC1': (1, 1, None),
    'rgb16': (3, 2, None), 'bgr16': (3, 2, 'reverse'), 'rgba16': (4, 2, None),
    'bgra16': (4, 2, 'bgra'), 'mono16': (1, 2, None), '16UC1': (1, 2, None),
}
# Wide pixels are scaled this many values at a time: temporaries stay small beside the output.
_PIECE_VALUES = 1 << 16
# JPEG frame headers: SOF0..SOF15 but DHT, JPG and DAC; markers without a length.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
# The next marker as libjpeg finds it: junk skipped, any 0xFF fill, FF00 is no marker.
_JPEG_MARKER = re.compile(rb'\xff+([^\x00\xff])')
_JPEG_MAX_SEGMENTS = 1000  # before the frame header; real files have a few dozen at most


def to_rgb(image: np.ndarray) -> np.ndarray:
    """
    Return an HxWx3 uint8 RGB array; the input itself when it already is one.

    Grey (HxW or HxWx1) is repeated to three channels, the alpha of RGBA is dropped, 16-bit
    (either byte order) is scaled to 8 bits, float is read as 0..1 (NaN as 0), bool as 0/1.
    Anything else is an InputError. Wide pixels are converted a few rows at a time, so little
    more than the output is allocated.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f'image must be a numpy array, not {type(image).__name__}')
    if image.size == 0:
        raise InputError(f'image is empty (shape {image.shape})')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f'image shape {image.shape} is not HxW, HxWx1, HxWx3 or HxWx4')
    if image.dtype == np.uint8:
        if image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        return image[:, :, :3] if image.shape[2] == 4 else image
    if not _is_wide(image.dtype):
        raise InputError(
            f'image dtype {image.dtype} is not supported (uint8, uint16, float, bool)')
    colour = image[:, :, :3]  # a view: alpha dropped, grey keeps its one channel
    rgb = np.empty(image.shape[:2] + (3,), np.uint8)
    rows = max(1, _PIECE_VALUES // (image.shape[1] * colour.shape[2]))
    for top in range(0, image.shape[0], rows):
        rgb[top:top + rows] = _to_uint8(colour[top:top + rows])  # grey broadcasts to 3
    return rgb


def check_image_size(height: int, width: int) -> None:
    """Reject empty images and images too large to process (InputError)."""
    if height <= 0 or width <= 0:
        raise InputError(f'empty image ({width}x{height})')
    if max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise InputError(f'image of {width}x{height} is larger than vlm_perception accepts '
                         f'({MAX_IMAGE_SIDE} pixels a side, {MAX_IMAGE_PIXELS} in all)')


def _is_wide(dtype: np.dtype) -> bool:
    return (dtype.kind == 'u' and dtype.itemsize == 2) or dtype == np.bool_ \
        or np.issubdtype(dtype, np.floating)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype.kind == 'u':  # uint16 of either byte order
        wide = image.astype(np.uint32)
        wide += 128
        wide //= 257
        return wide.astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    scaled = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def from_raw(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
             encoding: str, step: int, is_bigendian: bool = False) -> np.ndarray:
    """
    Return the RGB uint8 image held in raw ``sensor_msgs/Image`` bytes.

    ``step`` is the length of one row in bytes (it may include padding). For rgb8, bgr8, rgba8
    and bgra8 the result is a view of ``data`` (no copy); the other encodings are converted
    into a new array, allocating little more than it.
    """
    if encoding not in ENCODINGS:
        raise InputError(
            f"image encoding '{encoding}' is not supported ({', '.join(sorted(ENCODINGS))})")
    channels, depth, order = ENCODINGS[encoding]
    pixels = raw_pixels(data, height, width, channels, np.dtype(np.uint8 if depth == 1 else 'u2'),
                        step, is_bigendian, encoding)
    if order == 'reverse':
        pixels = pixels[:, :, ::-1]
    elif order == 'bgra':
        pixels = pixels[:, :, 2::-1]  # a view: red first, alpha dropped
    return to_rgb(pixels)


def raw_pixels(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
               channels: int, dtype: np.dtype, step: int, is_bigendian: bool,
               encoding: str) -> np.ndarray:
    """
    Return the (H, W, channels) pixels of raw image bytes with rows of ``step`` bytes.

    The result views ``data``; wider pixels take the byte order of ``is_bigendian`` (and are
    unaligned where ``step`` or ``data`` is odd). Sizes that do not fit are an InputError
    naming ``encoding``.
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
    if dtype.itemsize > 1:  # a view even of padded rows: a copy would double the memory
        rows = rows.view(dtype.newbyteorder('>' if is_bigendian else '<'))
    return rows.reshape(height, width, channels)


def _byte_buffer(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)


def compressed_size(
        data: bytes | bytearray | memoryview | np.ndarray) -> Optional[tuple[int, int]]:
    """
    Return the (width, height) a compressed image's header declares, decoding nothing.

    Reads JPEG (its SOFn frame header), PNG (IHDR), WebP, BMP and GIF headers; None for other
    formats (OpenCV's pixel limit, ours, guards those). A header of these formats that is cut
    short or malformed is an InputError.
    """
    view = memoryview(_byte_buffer(data))
    start = bytes(view[:32])
    if start[:3] == b'\xff\xd8\xff':
        return _jpeg_size(view)
    if start[:8] == b'\x89PNG\r\n\x1a\n':
        if len(start) < 24 or start[12:16] != b'IHDR':
            raise InputError('PNG image has no IHDR header')
        width, height = struct.unpack_from('>II', start, 16)
        return width, height
    if start[:4] == b'RIFF' and start[8:12] == b'WEBP':
        return _webp_size(start)
    if start[:2] == b'BM':
        header = struct.unpack_from('<I', start, 14)[0] if len(start) >= 26 else 0
        if header == 12:  # OS/2 1.x: 16-bit sides
            return struct.unpack_from('<HH', start, 18)
        if header < 36:
            raise InputError('BMP image header is cut short or not one OpenCV reads')
        width, height = struct.unpack_from('<ii', start, 18)
        return width, abs(height)  # negative height: rows top-down
    if start[:6] in (b'GIF87a', b'GIF89a'):
        if len(start) < 10:
            raise InputError('GIF image header is cut short')
        return struct.unpack_from('<HH', start, 6)
    return None


def _jpeg_size(view: memoryview) -> tuple[int, int]:
    position = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        found = _JPEG_MARKER.search(view, position)
        if found is None:
            raise InputError('JPEG image has no frame header (SOF): cut short or corrupt')
        marker, position = view[found.start(1)], found.end(1)
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            raise InputError('JPEG image has no frame header (SOF) before its data')
        if position + 2 > len(view):
            raise InputError('JPEG image header is cut short')
        length = struct.unpack_from('>H', view, position)[0]
        if marker in _JPEG_SOF:
            if length < 8 or position + 7 > len(view):
                raise InputError('JPEG frame header (SOF) is cut short')
            height, width = struct.unpack_from('>HH', view, position + 3)
            return width, height
        if length < 2:
            raise InputError(f'JPEG segment {marker:#04x} has a length of {length}')
        position += length
    raise InputError(f'JPEG image has over {_JPEG_MAX_SEGMENTS} segments before its frame '
                     'header (SOF)')


def _webp_size(start: bytes) -> tuple[int, int]:
    chunk = start[12:16]
    if chunk == b'VP8 ' and len(start) >= 30 and start[23:26] == b'\x9d\x01\x2a':
        width, height = struct.unpack_from('<HH', start, 26)
        return width & 0x3FFF, height & 0x3FFF  # the top bits ask for upscaling: ignored
    if chunk == b'VP8L' and len(start) >= 25 and start[20] == 0x2F:
        bits = struct.unpack_from('<I', start, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b'VP8X' and len(start) >= 30:  # extended: the canvas size
        return (int.from_bytes(start[24:27], 'little') + 1,
                int.from_bytes(start[27:30], 'little') + 1)
    raise InputError('WebP image header is cut short or unknown')


def _check_size(width: int, height: int, max_side: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f'compressed image is empty ({width}x{height})')
    if max(width, height) > max_side or width * height > max_pixels:
        raise InputError(f'compressed image of {width}x{height} is larger than {max_side} '
                         f'pixels a side or {max_pixels} in all')


def _checked_buffer(data: bytes | bytearray | memoryview | np.ndarray, max_side: int,
                    max_pixels: int) -> np.ndarray:
    """Return the bytes as a uint8 array; InputError if empty or its header declares too much."""
    buffer = _byte_buffer(data)
    if buffer.size == 0:
        raise InputError('compressed image data is empty')
    declared = compressed_size(buffer)
    if declared is not None:
        _check_size(*declared, max_side, max_pixels)
    return buffer


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray,
                      max_side: int = MAX_IMAGE_SIDE,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """
    Decode JPEG/PNG/... bytes (a CompressedImage's data, an image file) to RGB uint8.

    An image larger than max_side pixels a side or max_pixels in all is an InputError; when
    ``compressed_size`` reads its header, before anything is decoded. OpenCV's own limit
    (``OPENCV_IO_MAX_IMAGE_PIXELS``, ours unless set before) applies as well. Every failure
    is an InputError.
    """
    buffer = _checked_buffer(data, max_side, max_pixels)
    import cv2

    try:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # such as a header over OpenCV's pixel limit
        reason = getattr(error, 'err', None) or str(error).strip()
        raise InputError(f'compressed image could not be decoded: OpenCV: {reason} '
                         f"({getattr(error, 'func', '?')})") from error
    if decoded is None:
        raise InputError('compressed image data could not be decoded (not an image format '
                         'OpenCV reads, or corrupt)')
    _check_size(decoded.shape[1], decoded.shape[0], max_side, max_pixels)
    if decoded.ndim == 3 and decoded.shape[2] in (3, 4):
        if decoded.dtype == np.uint8:
            return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB if decoded.shape[2] == 3
                                else cv2.COLOR_BGRA2RGB)
        decoded = decoded[:, :, 2::-1]  # a view: to_rgb converts without another copy
    return to_rgb(decoded)


class DeviceJpegDecoder:
    """
    Decode compressed frames for a CUDA device: JPEG there with nvjpeg, the rest on the CPU.

    A JPEG becomes a 3xHxW uint8 tensor on the device (``torchvision.io.decode_jpeg``), which
    Frame takes as it is: the pixels cross the bus compressed, and device-side preprocessing
    starts from them. Data nvjpeg refuses is decoded by ``decode_compressed``: if that fails too
    the data was bad (its InputError); if it works nvjpeg cannot serve this frame (a torchvision
    without GPU decoding, a JPEG kind nvjpeg lacks), and ``on_fallback`` hears why, once.
    """

    def __init__(self, device: Any, on_fallback: Callable[[str], None] = lambda reason: None,
                 max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        """Decode for device (a CUDA one; any torch device works, the CPU for tests)."""
        import torch

        self.device = torch.device(device)
        self._on_fallback: Optional[Callable[[str], None]] = on_fallback
        self._limits = (max_side, max_pixels)

    def __call__(self, data: bytes | bytearray | memoryview | np.ndarray
                 ) -> Union[np.ndarray, 'torch.Tensor']:
        """Return a JPEG's pixels as a tensor on the device, other formats' as an RGB array."""
        buffer = _checked_buffer(data, *self._limits)  # before nvjpeg allocates anything
        if buffer[:3].tobytes() != b'\xff\xd8\xff':
            return decode_compressed(buffer, *self._limits)
        import torch
        from torchvision.io import decode_jpeg, ImageReadMode

        try:
            return decode_jpeg(torch.from_numpy(buffer.copy()), mode=ImageReadMode.RGB,
                               device=self.device)
        except RuntimeError as error:
            pixels = decode_compressed(buffer, *self._limits)  # bad data: its InputError
            if self._on_fallback is not None:
                report, self._on_fallback = self._on_fallback, None
                report(f'JPEG decoding on {self.device} failed ({error}); such frames are '
                       'decoded on the CPU')
            return pixels


def frame_decoder(device: str, on_fallback: Callable[[str], None] = lambda reason: None
                  ) -> Callable[[bytes], Union[np.ndarray, 'torch.Tensor']]:
    """Return how to decode compressed frames for models on device: nvjpeg on CUDA (above)."""
    if device.startswith('cuda'):
        return DeviceJpegDecoder(device, on_fallback)
    return decode_compressed


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
