"""Image size limits and memory: compressed headers checked before decoding, lean 16-bit paths."""

import os
import struct
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Callable
import zlib

import cv2
import numpy as np
import pytest

from vlm_perception.core import image as core_image
from vlm_perception.core.errors import InputError

MB = 1_000_000
CAP = 40_000_000  # MAX_IMAGE_PIXELS of the node
HEIGHT, WIDTH = 2000, 3000  # the large frames: rgb8 output of 18 MB
RNG = np.random.default_rng(11)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack('>H', len(payload) + 2) + payload


def _jpeg_header(width: int, height: int, body: bytes = b'') -> bytes:
    """Return SOI, APP0/JFIF, DQT, SOF0 (3 components), DHT and SOS of a baseline JPEG."""
    app0 = _segment(0xE0, b'JFIF\0\x01\x01\0\0\x01\0\x01\0\0')
    dqt = _segment(0xDB, b'\0' + bytes([1]) * 64)
    sof = _segment(0xC0, struct.pack('>BHHB', 8, height, width, 3)
                   + b'\x01\x11\x00\x02\x11\x00\x03\x11\x00')
    one_code = bytes([1] + [0] * 15) + b'\x00'  # a single code: category 0 / end of block
    dht = _segment(0xC4, b'\x00' + one_code) + _segment(0xC4, b'\x10' + one_code)
    sos = _segment(0xDA, b'\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00')
    return b'\xFF\xD8' + app0 + dqt + sof + dht + sos + body


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', crc)


def _png_header(width: int, height: int) -> bytes:
    """Return a PNG whose IHDR claims width x height RGB8, with one tiny IDAT."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr)
            + _chunk(b'IDAT', zlib.compress(bytes(16))) + _chunk(b'IEND', b''))


def _ppm_header(width: int, height: int) -> bytes:
    """Return a PPM header (a format core.image does not parse) and a few bytes of pixels."""
    return b'P6\n%d %d\n255\n' % (width, height) + bytes(64)


JPEG_BOMB = _jpeg_header(20000, 20000, bytes(440) + b'\xFF\xD9')
PNG_BOMB = _png_header(100000, 100000)


def _measure(function: Callable[[], Any]) -> tuple[Any, int, float]:
    """Return (result or raised exception, tracemalloc peak in bytes, seconds)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = function()
    except Exception as error:  # returned so that the peak is known either way
        result = error
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak, seconds


def _old_to8(values: np.ndarray) -> np.ndarray:
    """16 to 8 bits as the converter always did it."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _encode(extension: str, bgr: np.ndarray, *params: int) -> bytes:
    ok, encoded = cv2.imencode(extension, bgr, list(params))
    assert ok
    return encoded.tobytes()


# --- compressed headers ---------------------------------------------------------------------

@pytest.mark.parametrize('data, size', [(JPEG_BOMB, '20000x20000'),
                                        (PNG_BOMB, '100000x100000')], ids=['jpeg', 'png'])
def test_oversized_headers_are_refused_before_decoding(data: bytes, size: str) -> None:
    assert len(data) < 700
    result, peak, seconds = _measure(lambda: core_image.decode_compressed(data))
    assert isinstance(result, InputError), repr(result)
    assert f'compressed image of {size} is larger' in str(result)
    assert peak < 1 * MB and seconds < 0.5, (peak, seconds)


def test_header_size_of_real_images() -> None:
    bgr = RNG.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])
    images = {
        'jpeg': _encode('.jpg', bgr),
        'progressive jpeg': _encode('.jpg', bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        'png': _encode('.png', bgr),
        'png16': _encode('.png', bgr.astype(np.uint16) * 257),
        'webp lossy': _encode('.webp', bgr, cv2.IMWRITE_WEBP_QUALITY, 80),
        'webp lossless': _encode('.webp', bgr, cv2.IMWRITE_WEBP_QUALITY, 101),
        'webp alpha': _encode('.webp', bgra, cv2.IMWRITE_WEBP_QUALITY, 80),
        'bmp': _encode('.bmp', bgr),
        'gif': _encode('.gif', bgr),
    }
    jpeg = images['jpeg']  # an EXIF segment and fill bytes before SOF change nothing
    images['jpeg exif'] = jpeg[:2] + _segment(0xE1, b'Exif\0\0' + bytes(3000)) + b'\xFF' + jpeg[2:]
    for name, data in images.items():
        assert core_image.compressed_size(data) == (37, 23), name
        assert core_image.decode_compressed(data).shape == (23, 37, 3), name
    assert core_image.compressed_size(_ppm_header(37, 23)) is None  # left to OpenCV


_SMALL_JPEG = _jpeg_header(64, 48)
_SOF_AT, _SOS_AT = _SMALL_JPEG.index(b'\xFF\xC0'), _SMALL_JPEG.index(b'\xFF\xDA')


@pytest.mark.parametrize('data', [b'\xFF\xD8\xFF', b'\xFF\xD8\xFF\xE0\x00\x10JFIF',
                                  _SMALL_JPEG[:_SOF_AT] + _SMALL_JPEG[_SOS_AT:],
                                  _SMALL_JPEG[:_SOF_AT + 6],
                                  _jpeg_header(64, 0), b'\x89PNG\r\n\x1a\n\0\0',
                                  _png_header(0, 10)],
                         ids=['jpeg-soi', 'jpeg-app0', 'jpeg-no-sof', 'jpeg-cut-in-sof',
                              'jpeg-empty', 'png-short', 'png-empty'])
def test_truncated_or_empty_headers_are_input_errors(data: bytes) -> None:
    with pytest.raises(InputError):
        core_image.decode_compressed(data)


def test_small_real_images_decode_as_before() -> None:
    rgb = RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    png = _encode('.png', bgr)
    assert np.array_equal(core_image.decode_compressed(png), rgb)
    jpeg = _encode('.jpg', bgr)
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED),
                             cv2.COLOR_BGR2RGB)
    assert np.array_equal(core_image.decode_compressed(jpeg), reference)
    deep = RNG.integers(0, 65536, (40, 56, 4), dtype=np.uint16)  # BGRA, 16 bits
    decoded = core_image.decode_compressed(_encode('.png', deep))
    assert np.array_equal(decoded, _old_to8(deep[:, :, 2::-1]))
    assert np.array_equal(core_image.decode_compressed(_encode('.png', deep[:, :, :3].copy())),
                          _old_to8(deep[:, :, 2::-1]))


def test_corrupt_jpeg_is_an_input_error() -> None:
    header = _SMALL_JPEG[:_SMALL_JPEG.index(b'\xFF\xC4')]  # SOI, APP0, DQT, SOF: then garbage
    garbage = np.random.default_rng(5).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    for data in (header + garbage, header + b'\xFF\xC4\x00\x05\x00'):
        with pytest.raises(InputError):
            core_image.decode_compressed(data)


def test_format_left_to_opencv_over_its_own_limit_is_an_input_error() -> None:
    data = _ppm_header(100000, 100000)  # over OpenCV's limit, whichever is in effect here
    result, peak, seconds = _measure(lambda: core_image.decode_compressed(data))
    assert isinstance(result, InputError), repr(result)
    assert peak < 1 * MB and seconds < 0.5


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run code in a new interpreter (cv2 not imported yet), OpenCV limits not preset."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith('OPENCV_IO_MAX')}
    return subprocess.run([sys.executable, '-c', code], env=environment, capture_output=True,
                          text=True, timeout=60)


_DECODE_PPM = """
import os, tracemalloc
import cv2  # after the import above, as in the node
from vlm_perception.core.errors import InputError
tracemalloc.start()
try:
    DECODE(b'P6\\n8193 4883\\n255\\n' + bytes(64))  # 40.0 M pixels: over our cap only
except InputError as error:
    print('InputError', error)
print('peak', tracemalloc.get_traced_memory()[1])
print('env', os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS'))
"""


def _peak_and_env(output: str) -> tuple[int, str]:
    lines = dict(line.split(' ', 1) for line in output.splitlines() if ' ' in line)
    return int(lines['peak']), lines['env']


def test_opencv_pixel_limit_is_ours_once_core_image_is_imported() -> None:
    code = 'from vlm_perception.core.image import decode_compressed as DECODE\n' + _DECODE_PPM
    done = _fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert 'InputError' in done.stdout, done.stdout
    peak, env = _peak_and_env(done.stdout)
    assert env == str(CAP)
    assert peak < 1 * MB, peak  # refused by OpenCV before it allocated 120 MB of pixels


# --- 16-bit and other wide pixels: memory and values ----------------------------------------

def _raw(pixels: np.ndarray, padding: int, big_endian: bool) -> tuple[bytes, int]:
    wide = pixels.astype('>u2' if big_endian else '<u2')
    rows = wide.reshape(pixels.shape[0], -1).view(np.uint8)
    if padding:
        rows = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


def _assert_equal_by_rows(rgb: np.ndarray, expected: Callable[[slice], np.ndarray]) -> None:
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    for top in range(0, HEIGHT, 250):  # the reference in pieces: it needs a lot of memory
        rows = slice(top, top + 250)
        assert np.array_equal(rgb[rows], expected(rows)), top


_ORDER = {'rgba16': [0, 1, 2], 'bgra16': [2, 1, 0], 'rgb16': [0, 1, 2], 'bgr16': [2, 1, 0],
          'mono16': [0, 0, 0], '16UC1': [0, 0, 0]}


@pytest.mark.parametrize('encoding, padding, big_endian', [
    ('rgba16', 0, False), ('rgba16', 6, True), ('bgra16', 0, False), ('rgb16', 0, False),
    ('bgr16', 2, True), ('mono16', 0, False), ('16UC1', 4, True)])
def test_from_raw_16_bit_allocates_little_more_than_its_output(encoding: str, padding: int,
                                                               big_endian: bool) -> None:
    channels = core_image.ENCODINGS[encoding][0]
    pixels = RNG.integers(0, 65536, (HEIGHT, WIDTH, channels), dtype=np.uint16)
    data, step = _raw(pixels, padding, big_endian)
    rgb, peak, seconds = _measure(lambda: core_image.from_raw(data, HEIGHT, WIDTH, encoding, step,
                                                              is_bigendian=big_endian))
    assert isinstance(rgb, np.ndarray), repr(rgb)
    output = HEIGHT * WIDTH * 3
    print(f'{encoding} padding {padding}: peak {peak / MB:.1f} MB for {output / MB:.0f} MB '
          f'output, {seconds:.3f} s')
    assert peak <= 1.1 * output, peak / output
    _assert_equal_by_rows(rgb, lambda rows: _old_to8(pixels[rows][:, :, _ORDER[encoding]]))


@pytest.mark.parametrize('dtype, channels', [(np.uint16, 4), (np.uint16, 1), (np.float32, 4)])
def test_to_rgb_of_wide_arrays_allocates_little_more_than_its_output(dtype: type,
                                                                     channels: int) -> None:
    if dtype == np.uint16:
        image = RNG.integers(0, 65536, (HEIGHT, WIDTH, channels), dtype=np.uint16)
    else:
        image = RNG.random((HEIGHT, WIDTH, channels), dtype=np.float32) * 1.2 - 0.1
        image[::7, ::5] = np.nan
    rgb, peak, seconds = _measure(lambda: core_image.to_rgb(image))
    assert isinstance(rgb, np.ndarray), repr(rgb)
    output = HEIGHT * WIDTH * 3
    print(f'{np.dtype(dtype)} x{channels}: peak {peak / MB:.1f} MB, {seconds:.3f} s')
    assert peak <= 1.1 * output, peak / output
    order = [0, 1, 2] if channels == 4 else [0, 0, 0]

    def old(rows: slice) -> np.ndarray:
        part = image[rows][:, :, order]
        if dtype == np.uint16:
            return _old_to8(part)
        scaled = np.nan_to_num(part.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    _assert_equal_by_rows(rgb, old)


def test_every_16_bit_value_scales_as_before() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.repeat(_old_to8(values)[:, :, None], 3, axis=2)
    assert np.array_equal(core_image.to_rgb(values), expected)
    for dtype in ('<u2', '>u2'):
        data = np.repeat(values.reshape(256, 256, 1), 4, axis=2).astype(dtype).tobytes()
        rgb = core_image.from_raw(data, 256, 256, 'rgba16', 256 * 8, dtype == '>u2')
        assert np.array_equal(rgb, expected), dtype


# --- the node's conversions -----------------------------------------------------------------

def _conversions() -> Any:
    pytest.importorskip('rclpy')
    pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')
    from vlm_perception.ros import conversions

    return conversions


def test_node_refuses_compressed_bombs_from_their_header() -> None:
    conversions = _conversions()
    from sensor_msgs.msg import CompressedImage

    for data in (JPEG_BOMB, PNG_BOMB, _ppm_header(100000, 100000)):
        message = CompressedImage(format='jpeg', data=data)
        result, peak, seconds = _measure(lambda: conversions.compressed_to_rgb(message))
        assert isinstance(result, InputError), repr(result)
        assert peak < 1 * MB and seconds < 0.5, (peak, seconds)


def test_node_process_has_the_opencv_limit() -> None:
    _conversions()
    code = ('import vlm_perception.ros.node\n'
            'from vlm_perception.ros.conversions import compressed_to_rgb\n'
            'from sensor_msgs.msg import CompressedImage\n'
            'def DECODE(data): compressed_to_rgb(CompressedImage(data=data))\n' + _DECODE_PPM)
    done = _fresh_python(code)
    assert done.returncode == 0, done.stderr
    assert 'InputError' in done.stdout, done.stdout
    peak, env = _peak_and_env(done.stdout)
    assert env == str(CAP) and peak < 1 * MB, (env, peak)


def test_node_rgba16_image_allocates_little_more_than_its_output() -> None:
    conversions = _conversions()
    if conversions.CvBridge is not None:
        pytest.skip('cv_bridge converts raw images here')
    from sensor_msgs.msg import Image

    pixels = RNG.integers(0, 65536, (HEIGHT, WIDTH, 4), dtype=np.uint16)
    data, step = _raw(pixels, 0, False)
    message = Image(height=HEIGHT, width=WIDTH, encoding='rgba16', step=step, data=data)
    rgb, peak, _ = _measure(lambda: conversions.image_to_rgb(message))
    assert isinstance(rgb, np.ndarray), repr(rgb)
    assert peak <= 1.1 * HEIGHT * WIDTH * 3, peak
    _assert_equal_by_rows(rgb, lambda rows: _old_to8(pixels[rows][:, :, :3]))
