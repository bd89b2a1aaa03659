"""Image conversion: arrays, raw sensor_msgs/Image bytes and compressed images to RGB uint8."""

import cv2
import numpy as np
import pytest

from vlm_perception.core.errors import InputError
from vlm_perception.core.image import decode_compressed, ENCODINGS, from_raw, load_image, to_rgb

HEIGHT, WIDTH = 5, 7
RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)


def _raw(pixels: np.ndarray, padding: int, big_endian: bool = False) -> tuple[bytes, int]:
    """Serialise pixels row by row with padding bytes after each row; returns (data, step)."""
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('>u2' if big_endian else '<u2')
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


def _to8(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def test_rgb_uint8_is_returned_as_is() -> None:
    assert to_rgb(RGB) is RGB


@pytest.mark.parametrize('shape', [(HEIGHT, WIDTH), (HEIGHT, WIDTH, 1)])
def test_grey_becomes_three_equal_channels(shape: tuple) -> None:
    grey = RGB[:, :, 0].reshape(shape)
    rgb = to_rgb(grey)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[:, :, c], RGB[:, :, 0]) for c in range(3))


def test_rgba_drops_alpha_and_16_bit_and_float_are_scaled() -> None:
    rgba = np.concatenate([RGB, np.zeros((HEIGHT, WIDTH, 1), np.uint8)], axis=2)
    assert np.array_equal(to_rgb(rgba), RGB)
    assert np.array_equal(to_rgb(RGB.astype(np.uint16) * 257), RGB)
    assert np.array_equal(to_rgb(RGB.astype(np.float32) / 255.0), RGB)
    float_image = np.full((2, 2, 3), np.nan, np.float64)
    float_image[0, 0] = 2.0
    converted = to_rgb(float_image)
    assert converted[0, 0].tolist() == [255] * 3 and converted[1, 1].tolist() == [0] * 3
    assert to_rgb(np.ones((2, 2), bool)).max() == 255


@pytest.mark.parametrize('bad', [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((2, 2, 2, 3), np.uint8), np.zeros((4, 4, 3), np.int64),
                                 np.zeros((4, 4, 3), np.complex64), [[1, 2], [3, 4]], None])
def test_unusable_arrays_are_rejected(bad: object) -> None:
    with pytest.raises(InputError):
        to_rgb(bad)


@pytest.mark.parametrize('padding', [0, 3])
@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_from_raw_every_encoding_with_padded_rows(encoding: str, padding: int) -> None:
    channels, depth, _ = ENCODINGS[encoding]
    wide = RGB.astype(np.uint16) * 257 + 3 if depth == 2 else RGB  # 16-bit: low byte matters
    rgba = np.concatenate([wide, wide[:, :, :1]], axis=2)
    source = {('rgb', 3): wide, ('bgr', 3): wide[:, :, ::-1], ('rgb', 4): rgba,
              ('bgr', 4): rgba[:, :, [2, 1, 0, 3]]}
    if channels == 1:
        pixels, expected = (GREY16, np.repeat(_to8(GREY16)[:, :, None], 3, axis=2)) \
            if depth == 2 else (RGB[:, :, 1], np.repeat(RGB[:, :, 1:2], 3, axis=2))
    else:
        pixels = source[(encoding[:3], channels)]
        expected = _to8(wide) if depth == 2 else RGB
    for big_endian in ((False, True) if depth == 2 else (False,)):
        data, step = _raw(np.ascontiguousarray(pixels), padding, big_endian)
        rgb = from_raw(data, HEIGHT, WIDTH, encoding, step, is_bigendian=big_endian)
        assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
        assert np.array_equal(rgb, expected), (encoding, padding, big_endian)


def test_from_raw_rgb8_is_a_view_of_the_message_buffer() -> None:
    data, step = _raw(RGB, padding=4)
    buffer = bytearray(data)
    rgb = from_raw(buffer, HEIGHT, WIDTH, 'rgb8', step)
    assert np.shares_memory(rgb, np.frombuffer(buffer, np.uint8))


@pytest.mark.parametrize('height, width, encoding, step, size, message', [
    (HEIGHT, WIDTH, 'rgb8', WIDTH * 3 - 1, 200, 'step'),
    (HEIGHT, WIDTH, 'rgb8', WIDTH * 3, WIDTH * 3 * HEIGHT - 1, 'bytes'),
    (HEIGHT, WIDTH, 'yuv422', WIDTH * 2, 200, 'encoding'),
    (0, WIDTH, 'mono8', WIDTH, 0, 'empty'),
])
def test_from_raw_rejects_wrong_sizes_and_encodings(height: int, width: int, encoding: str,
                                                    step: int, size: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        from_raw(bytes(size), height, width, encoding, step)


def test_decode_compressed_png_is_exact_and_jpeg_keeps_colour_order() -> None:
    _, png = cv2.imencode('.png', RGB[:, :, ::-1].copy())
    assert np.array_equal(decode_compressed(png.tobytes()), RGB)
    orange = np.zeros((16, 24, 3), np.uint8)
    orange[:] = (230, 120, 20)
    _, jpeg = cv2.imencode('.jpg', orange[:, :, ::-1].copy())
    decoded = decode_compressed(memoryview(jpeg.tobytes()))
    assert decoded.shape == orange.shape
    assert np.abs(decoded.astype(int) - orange).max() <= 8


def test_decode_compressed_grey_rgba_and_16_bit_png() -> None:
    _, grey = cv2.imencode('.png', RGB[:, :, 0].copy())
    assert np.array_equal(decode_compressed(grey)[:, :, 2], RGB[:, :, 0])
    bgra = np.concatenate([RGB[:, :, ::-1], np.full((HEIGHT, WIDTH, 1), 9, np.uint8)], axis=2)
    _, rgba = cv2.imencode('.png', bgra)
    assert np.array_equal(decode_compressed(rgba.tobytes()), RGB)
    _, deep = cv2.imencode('.png', GREY16)
    assert np.array_equal(decode_compressed(deep.tobytes())[:, :, 0], _to8(GREY16))


@pytest.mark.parametrize('garbage', [b'', b'not an image at all', bytes(100)])
def test_decode_compressed_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(InputError):
        decode_compressed(garbage)


def test_load_image_reports_missing_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(InputError, match='No such file'):
        load_image(tmp_path / 'missing.png')
    text_file = tmp_path / 'notes.png'
    text_file.write_text('hello')
    with pytest.raises(InputError, match='notes.png'):
        load_image(text_file)
    with pytest.raises(InputError):
        load_image(tmp_path)
