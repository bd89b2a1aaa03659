"""
Depth geometry without ROS: camera model, raw depth images, 3D placement, transforms, buffer.

Expected values come from geometry, not from the code under test: pixels are made from known
3D points (by the pinhole definition or cv2.projectPoints) and must come back as those points.
Box pixels are continuous (0..width), K counts pixel centres at whole numbers, positions are
REP 103 optical (x right, y down, z forward).
"""

import math

import cv2
import numpy as np
import pytest

from vlm_perception.core.depth import (depth_from_raw, DepthImage, PinholeCamera, place,
                                       place_all, RigidTransform, StampedBuffer)
from vlm_perception.core.errors import InputError
from vlm_perception.core.summary import position_words, summarize
from vlm_perception.core.types import Detection

WIDTH, HEIGHT = 640, 480
FX, FY, CX, CY = 525.0, 520.0, 310.2, 245.7  # fx != fy and an off-centre principal point
K = (FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0)
BACKGROUND_M = 5.0
MIN_DEPTH, MAX_DEPTH = 0.3, 10.0
PLUMB_BOB = [-0.2, 0.05, 0.001, -0.001, 0.0]
RATIONAL = [-0.1, 0.02, 0.001, -0.001, 0.0, 0.1, 0.01, 0.0]
# Rectangles (left, top, right, bottom) in pixel indices, right and bottom exclusive.
RECTANGLES = [(380, 100, 480, 180), (40, 300, 161, 431)]


def _camera(**changes) -> PinholeCamera:
    values = {'k': K, 'width': WIDTH, 'height': HEIGHT}
    values.update(changes)
    return PinholeCamera.from_values(**values)


def _scene(z: float, rectangle: tuple, shape: tuple = (HEIGHT, WIDTH)) -> np.ndarray:
    """Return metres: a flat rectangle at z on the background."""
    metres = np.full(shape, BACKGROUND_M, dtype=np.float64)
    left, top, right, bottom = rectangle
    metres[top:bottom, left:right] = z
    return metres


def _raw(metres: np.ndarray, encoding: str) -> DepthImage:
    """Read the depth image a sensor would send: 16UC1 millimetres or 32FC1 metres."""
    height, width = metres.shape
    if encoding == '16UC1':
        pixels = np.round(metres * 1000).astype('<u2')
    else:
        pixels = metres.astype('<f4')
    return depth_from_raw(pixels.tobytes(), height, width, encoding, width * pixels.itemsize)


def _detection(rectangle: tuple, label: str = 'cup') -> Detection:
    """Return a box exactly covering the pixels of rectangle (continuous coordinates)."""
    left, top, right, bottom = rectangle
    return Detection(label, 0.9, (left + right) / 2, (top + bottom) / 2, right - left,
                     bottom - top)


def _centre_point(rectangle: tuple, z: float, fx: float = FX, fy: float = FY, cx: float = CX,
                  cy: float = CY) -> np.ndarray:
    """Return the 3D point seen at the mean pixel index of rectangle at z (pinhole model)."""
    left, top, right, bottom = rectangle
    u, v = (left + right - 1) / 2, (top + bottom - 1) / 2  # K's terms: pixel centres at j
    return np.array([(u - cx) * z / fx, (v - cy) * z / fy, z])


def _place(detection: Detection, depth: DepthImage, camera: PinholeCamera = None):
    return place(detection, depth, camera or _camera(), WIDTH, HEIGHT, MIN_DEPTH, MAX_DEPTH)


def _project(points: np.ndarray, k, d=()) -> np.ndarray:
    """Return continuous pixel coordinates of 3D points, projected by OpenCV."""
    pixels, _ = cv2.projectPoints(np.asarray(points, np.float64), np.zeros(3), np.zeros(3),
                                  np.array(k, np.float64).reshape(3, 3),
                                  np.array(d, np.float64))
    return pixels.reshape(-1, 2) + 0.5


def _grid_points(half_x: float = 0.55, half_y: float = 0.42, z: float = 2.0) -> np.ndarray:
    """Return 3D points whose rays span the image, at a few depths."""
    xs, ys = np.meshgrid(np.linspace(-half_x, half_x, 12), np.linspace(-half_y, half_y, 9))
    depths = np.resize([z, 0.5 * z, 1.7 * z], xs.size)
    return np.stack([xs.ravel() * depths, ys.ravel() * depths, depths], axis=1)


# --- PinholeCamera.from_values ---


def test_from_values_accepts_a_camera_info() -> None:
    camera = PinholeCamera.from_values(np.array(K), WIDTH, HEIGHT, 'plumb_bob', PLUMB_BOB)
    assert camera.k == K and all(isinstance(value, float) for value in camera.k)
    assert (camera.width, camera.height) == (WIDTH, HEIGHT)
    assert camera.distortion_model == 'plumb_bob' and camera.d == tuple(PLUMB_BOB)


def _k_with(**entries) -> list:
    k = list(K)
    for index, value in entries.items():
        k[int(index[1:])] = value
    return k


@pytest.mark.parametrize('k, d', [
    ([0.0] * 9, ()),                            # an all-zero K (camera not calibrated)
    (_k_with(i0=0.0), ()),                      # fx = 0
    (_k_with(i0=-525.0), ()),                   # fx < 0
    (_k_with(i4=0.0), ()),                      # fy = 0
    (_k_with(i2=math.nan), ()),
    (_k_with(i4=math.inf), ()),
    (K, (-0.2, math.nan, 0.0, 0.0, 0.0)),
    (K, (-math.inf, 0.0, 0.0, 0.0, 0.0)),
    (K[:8], ()),                                # wrong length
    (K + (0.0,), ()),
    (_k_with(i8=2.0), ()),                      # last row not (0, 0, 1)
    (_k_with(i8=0.0), ()),
    (_k_with(i6=0.001), ()),
    (_k_with(i7=0.001), ()),
    (_k_with(i3=0.5), ()),                      # second row not (0, fy, cy)
], ids=['zero', 'fx0', 'fx-', 'fy0', 'nanK', 'infK', 'nanD', 'infD', 'len8', 'len10',
        'k22', 'k22zero', 'k20', 'k21', 'k10'])
def test_from_values_rejects_invalid_intrinsics(k, d) -> None:
    with pytest.raises(InputError):
        PinholeCamera.from_values(k, WIDTH, HEIGHT, 'plumb_bob', d)


def test_from_values_rejects_a_negative_size() -> None:
    with pytest.raises(InputError):
        PinholeCamera.from_values(K, -640, HEIGHT)


# --- back-projection and placement ---


@pytest.mark.parametrize('rectangle', RECTANGLES)
@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_flat_rectangle_is_placed_at_its_back_projected_centre(encoding: str,
                                                               rectangle: tuple) -> None:
    z = 1.234
    depth = _raw(_scene(z, rectangle), encoding)
    placement = _place(_detection(rectangle), depth)
    assert placement is not None
    np.testing.assert_allclose(placement.position, _centre_point(rectangle, z), atol=1e-3)
    assert abs(placement.position[2] - z) < 5e-4  # exact to the millimetre
    left, top, right, bottom = rectangle
    width_m, height_m = (right - left) * z / FX, (bottom - top) * z / FY
    assert placement.size[0] == pytest.approx(width_m, rel=0.01)
    assert placement.size[1] == pytest.approx(height_m, rel=0.01)
    assert abs(placement.size[2]) < 1e-3  # flat


def test_object_on_the_left_above_centre_has_negative_x_and_y() -> None:
    rectangle = (100, 60, 160, 120)  # left of and above the principal point
    placement = _place(_detection(rectangle), _raw(_scene(2.0, rectangle), '16UC1'))
    assert placement.position[0] < -0.5 and placement.position[1] < -0.4
    assert placement.position[2] == pytest.approx(2.0, abs=5e-4)


def test_round_object_uses_the_disc_depth_and_ignores_the_background() -> None:
    z_mm, centre, radius = 900, (200, 300), 50
    millimetres = np.full((HEIGHT, WIDTH), int(BACKGROUND_M * 1000), dtype=np.uint16)
    cv2.circle(millimetres, centre, radius, z_mm, thickness=-1)
    rows, columns = np.nonzero(millimetres == z_mm)
    rectangle = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    # The box's corners see the 5 m background, its middle the disc.
    assert millimetres[rectangle[1], rectangle[0]] == BACKGROUND_M * 1000
    depth = depth_from_raw(millimetres.tobytes(), HEIGHT, WIDTH, '16UC1', WIDTH * 2)
    placement = _place(_detection(rectangle), depth)
    z = z_mm / 1000
    expected = [(centre[0] - CX) * z / FX, (centre[1] - CY) * z / FY, z]
    np.testing.assert_allclose(placement.position, expected, atol=1e-3)
    assert placement.size[0] == pytest.approx((2 * radius + 1) * z / FX, rel=0.01)
    assert abs(placement.size[2]) < 1e-3


def test_slanted_object_has_its_depth_spread_as_size_z() -> None:
    rectangle = (300, 200, 400, 280)
    metres = _scene(0.0, rectangle)
    left, top, right, bottom = rectangle
    metres[top:bottom, left:right] = np.linspace(1.0, 1.2, right - left)[None, :]  # a ramp
    placement = _place(_detection(rectangle), _raw(metres, '32FC1'))
    assert placement.position[2] == pytest.approx(1.1, abs=2e-3)
    assert placement.size[2] == pytest.approx(0.8 * 0.2, rel=0.05)  # 10th to 90th percentile


def test_missing_pixels_do_not_move_the_object() -> None:
    rectangle, z = RECTANGLES[0], 1.5
    millimetres = np.round(_scene(z, rectangle) * 1000).astype(np.uint16)
    left, top, right, bottom = rectangle
    rng = np.random.default_rng(7)
    holes = rng.random((bottom - top, right - left)) < 0.4
    millimetres[top:bottom, left:right][holes] = 0
    depth = depth_from_raw(millimetres.tobytes(), HEIGHT, WIDTH, '16UC1', WIDTH * 2)
    placement = _place(_detection(rectangle), depth)
    assert placement is not None
    np.testing.assert_allclose(placement.position, _centre_point(rectangle, z), atol=0.02 * z)


@pytest.mark.parametrize('value', [0.0, math.nan, 0.2, 12.0],
                         ids=['zero', 'nan', 'too-near', 'too-far'])
def test_no_valid_depth_under_the_object_places_nothing(value: float) -> None:
    placement = _place(_detection(RECTANGLES[0]), _raw(_scene(value, RECTANGLES[0]), '32FC1'))
    assert placement is None


def test_a_single_valid_pixel_is_too_few() -> None:
    rectangle = RECTANGLES[0]
    metres = _scene(0.0, rectangle)
    metres[140, 430] = 1.0  # the middle of the box
    assert _place(_detection(rectangle), _raw(metres, '16UC1')) is None


def test_place_all_keeps_detections_that_depth_cannot_place() -> None:
    hole, solid = RECTANGLES
    metres = _scene(0.0, hole)
    metres[solid[1]:solid[3], solid[0]:solid[2]] = 2.0
    unplaced, placed = _detection(hole, 'bottle'), _detection(solid, 'cup')
    result = place_all([unplaced, placed], _raw(metres, '16UC1'), _camera(), WIDTH, HEIGHT,
                       MIN_DEPTH, MAX_DEPTH)
    assert [d.label for d in result] == ['bottle', 'cup']
    assert result[0] == unplaced and result[0].position is None and result[0].size is None
    np.testing.assert_allclose(result[1].position, _centre_point(solid, 2.0), atol=1e-3)
    assert (result[1].center_x, result[1].size_x) == (placed.center_x, placed.size_x)
    assert place_all([placed], None, _camera(), WIDTH, HEIGHT, MIN_DEPTH, MAX_DEPTH) == [placed]
    assert place_all([placed], _raw(metres, '16UC1'), None, WIDTH, HEIGHT, MIN_DEPTH,
                     MAX_DEPTH) == [placed]


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_depth_of_another_resolution_places_at_the_same_point(encoding: str) -> None:
    z, rectangle = 1.8, RECTANGLES[0]
    half = tuple(value // 2 for value in rectangle)  # 320x240 sees the same field of view
    depth = _raw(_scene(z, half, (HEIGHT // 2, WIDTH // 2)), encoding)
    placement = _place(_detection(rectangle), depth)
    np.testing.assert_allclose(placement.position, _centre_point(rectangle, z), atol=0.02 * z)


def test_camera_info_of_another_resolution_places_at_the_same_point() -> None:
    # The same lens calibrated at 1280x960: pixel centres j + 0.5 scale by 2.
    big = PinholeCamera.from_values((2 * FX, 0.0, 2 * CX + 0.5, 0.0, 2 * FY, 2 * CY + 0.5,
                                     0.0, 0.0, 1.0), 2 * WIDTH, 2 * HEIGHT)
    z, rectangle = 1.3, RECTANGLES[1]
    placement = _place(_detection(rectangle), _raw(_scene(z, rectangle), '16UC1'), big)
    np.testing.assert_allclose(placement.position, _centre_point(rectangle, z), atol=1e-3)


# --- for_image ---


@pytest.mark.parametrize('width, height', [(320, 240), (1280, 960), (1280, 720), (640, 480)])
def test_for_image_scales_projections_with_the_image(width: int, height: int) -> None:
    camera = _camera()
    scaled = camera.for_image(width, height)
    assert (scaled.width, scaled.height) == (width, height)
    points = _grid_points()
    original = _project(points, camera.k)
    resized = _project(points, scaled.k)
    np.testing.assert_allclose(resized, original * [width / WIDTH, height / HEIGHT], atol=1e-9)
    np.testing.assert_allclose(scaled.rays(resized[:, 0], resized[:, 1]),
                               points[:, :2] / points[:, 2:], atol=1e-9)


def test_for_image_of_an_unknown_size_keeps_k() -> None:
    camera = PinholeCamera.from_values(K, 0, 0)
    scaled = camera.for_image(WIDTH, HEIGHT)
    assert scaled.k == K and (scaled.width, scaled.height) == (WIDTH, HEIGHT)


# --- rays and distortion ---


def test_rays_without_distortion_are_the_pinhole_inverse() -> None:
    points = _grid_points()
    pixels = _project(points, K)
    np.testing.assert_allclose(_camera().rays(pixels[:, 0], pixels[:, 1]),
                               points[:, :2] / points[:, 2:], atol=1e-12)
    # The centre of pixel (0, 0) is continuous (0.5, 0.5), K's (0, 0).
    np.testing.assert_allclose(_camera().rays(np.array([0.5]), np.array([0.5])),
                               [[-CX / FX, -CY / FY]], atol=1e-12)


@pytest.mark.parametrize('model, d', [('plumb_bob', PLUMB_BOB),
                                      ('rational_polynomial', RATIONAL)])
def test_rays_undo_distortion(model: str, d: list) -> None:
    camera = _camera(distortion_model=model, d=d)
    assert camera.distortion_supported
    points = _grid_points()
    pixels = _project(points, K, d)
    assert pixels.min() > 0 and (pixels.max(axis=0) < [WIDTH, HEIGHT]).all()  # in the image
    truth = points[:, :2] / points[:, 2:]
    assert np.abs(_camera().rays(pixels[:, 0], pixels[:, 1]) - truth).max() > 0.01  # distorted
    np.testing.assert_allclose(camera.rays(pixels[:, 0], pixels[:, 1]), truth, atol=1e-4)


def test_rays_undo_the_distortion_of_a_wide_angle_lens() -> None:
    # About 88 degrees across; D is monotonic over the whole image (invertible).
    k, d = (330.0, 0.0, 319.5, 0.0, 330.0, 239.5, 0.0, 0.0, 1.0), [-0.25, 0.05, 0.0, 0.0, 0.0]
    camera = PinholeCamera.from_values(k, WIDTH, HEIGHT, 'plumb_bob', d)
    points = _grid_points(0.95, 0.72)
    pixels = _project(points, k, d)
    assert pixels.min() > 0 and (pixels.max(axis=0) < [WIDTH, HEIGHT]).all()
    np.testing.assert_allclose(camera.rays(pixels[:, 0], pixels[:, 1]),
                               points[:, :2] / points[:, 2:], atol=1e-4)


def test_unknown_distortion_model_uses_k_only() -> None:
    camera = _camera(distortion_model='equidistant', d=[0.1, 0.01, 0.002, 0.0])
    assert not camera.distortion_supported
    points = _grid_points()
    pixels = _project(points, K)  # pinhole projection: with K only, the rays come back
    np.testing.assert_allclose(camera.rays(pixels[:, 0], pixels[:, 1]),
                               points[:, :2] / points[:, 2:], atol=1e-12)
    assert _camera(distortion_model='equidistant', d=[0.0] * 4).distortion_supported
    assert _camera(distortion_model='', d=()).distortion_supported


# --- depth_from_raw ---


MILLIMETRES = np.array([[1000, 1234, 0, 65535, 300],
                        [5000, 1, 2, 999, 4321],
                        [258, 513, 772, 1027, 1286]], dtype=np.uint16)


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_16_bit_depth_with_row_padding(encoding: str) -> None:
    height, width = MILLIMETRES.shape
    step = width * 2 + 6
    rows = np.full((height, step), 0xAB, dtype=np.uint8)  # padding bytes are garbage
    rows[:, :width * 2] = MILLIMETRES.astype('<u2').view(np.uint8).reshape(height, -1)
    depth = depth_from_raw(rows.tobytes(), height, width, encoding, step, depth_scale=0.001)
    assert depth.shape == (height, width)
    metres = depth.metres(0, height, 0, width)
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres, MILLIMETRES / 1000, rtol=1e-6)
    np.testing.assert_allclose(depth.metres(1, 3, 2, 4), MILLIMETRES[1:3, 2:4] / 1000, rtol=1e-6)


def test_16_bit_depth_in_other_units() -> None:
    height, width = MILLIMETRES.shape
    depth = depth_from_raw(MILLIMETRES.astype('<u2').tobytes(), height, width, '16UC1',
                           width * 2, depth_scale=0.0001)  # tenths of millimetres
    np.testing.assert_allclose(depth.metres(0, height, 0, width), MILLIMETRES / 10000, rtol=1e-6)


def test_big_endian_depth() -> None:
    height, width = MILLIMETRES.shape
    depth = depth_from_raw(MILLIMETRES.astype('>u2').tobytes(), height, width, '16UC1',
                           width * 2, is_bigendian=True)
    np.testing.assert_allclose(depth.metres(0, height, 0, width), MILLIMETRES / 1000, rtol=1e-6)
    metres = np.array([[1.5, math.nan], [0.0, 7.25]], dtype=np.float32)
    depth = depth_from_raw(metres.astype('>f4').tobytes(), 2, 2, '32FC1', 8, is_bigendian=True)
    np.testing.assert_array_equal(depth.metres(0, 2, 0, 2), metres)


def test_float_depth_is_metres_whatever_the_scale() -> None:
    metres = np.array([[1.5, math.nan, 0.0], [0.25, 9.75, 3.0]], dtype=np.float32)
    step = 3 * 4 + 4
    rows = np.zeros((2, step), dtype=np.uint8)
    rows[:, :12] = metres.view(np.uint8).reshape(2, -1)
    depth = depth_from_raw(rows.tobytes(), 2, 3, '32FC1', step, depth_scale=0.001)
    np.testing.assert_array_equal(depth.metres(0, 2, 0, 3), metres)  # NaN kept as NaN


@pytest.mark.parametrize('encoding', ['8UC1', 'rgb8', '16SC1', '32FC3', ''])
def test_unsupported_depth_encoding(encoding: str) -> None:
    with pytest.raises(InputError):
        depth_from_raw(bytes(64), 4, 4, encoding, 16)


@pytest.mark.parametrize('size, step', [(3 * 10 - 1, 10), (3 * 8, 8)],
                         ids=['short-data', 'short-step'])
def test_depth_data_that_does_not_fit(size: int, step: int) -> None:
    with pytest.raises(InputError):
        depth_from_raw(bytes(size), 3, 5, '16UC1', step)  # 5 pixels need 10 bytes a row


# --- RigidTransform ---


HALF = math.sqrt(0.5)
OPTICAL_TO_BODY = (-0.5, 0.5, -0.5, 0.5)


def test_identity_and_translation() -> None:
    point = (0.3, -1.2, 2.5)
    assert RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)).apply(point) == point
    np.testing.assert_allclose(RigidTransform((1.0, -2.0, 0.5), (0, 0, 0, 1)).apply(point),
                               (1.3, -3.2, 3.0), atol=1e-12)


def test_quarter_turn_about_z() -> None:
    turn = RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, HALF, HALF))
    np.testing.assert_allclose(turn.apply((1.0, 0.0, 0.0)), (0.0, 1.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(turn.apply((0.0, 1.0, 0.0)), (-1.0, 0.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(turn.apply((0.0, 0.0, 1.0)), (0.0, 0.0, 1.0), atol=1e-12)
    # Rotation first, then translation; a quaternion of another length is normalised.
    moved = RigidTransform((0.0, 0.0, 1.0), (0.0, 0.0, 3 * HALF, 3 * HALF))
    np.testing.assert_allclose(moved.apply((1.0, 0.0, 0.0)), (0.0, 1.0, 1.0), atol=1e-12)


def test_camera_optical_to_body() -> None:
    optical = RigidTransform((0.0, 0.0, 0.0), OPTICAL_TO_BODY)
    np.testing.assert_allclose(optical.apply((0.0, 0.0, 1.0)), (1.0, 0.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(optical.apply((1.0, 0.0, 0.0)), (0.0, -1.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(optical.apply((0.0, 1.0, 0.0)), (0.0, 0.0, -1.0), atol=1e-12)


@pytest.mark.parametrize('seed', range(5))
def test_rotation_matches_axis_angle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-math.pi, math.pi)
    quaternion = (*(axis * math.sin(angle / 2)), math.cos(angle / 2))
    reference, _ = cv2.Rodrigues(axis * angle)
    transform = RigidTransform((0.1, 0.2, 0.3), quaternion)
    np.testing.assert_allclose(transform.matrix(), reference, atol=1e-12)
    point = rng.normal(size=3)
    np.testing.assert_allclose(transform.apply(tuple(point)),
                               reference @ point + [0.1, 0.2, 0.3], atol=1e-12)


@pytest.mark.parametrize('rotation', [(0.0, 0.0, 0.0, 0.0), (0.0, math.nan, 0.0, 1.0)])
def test_not_a_quaternion(rotation: tuple) -> None:
    with pytest.raises(InputError):
        RigidTransform((0.0, 0.0, 0.0), rotation).apply((1.0, 0.0, 0.0))


# --- StampedBuffer ---


MS = 1_000_000  # nanoseconds
FAR = 10**15  # a stamp after every item: its nearest is the newest


def test_empty_buffer() -> None:
    buffer = StampedBuffer()
    assert buffer.nearest(0, 10.0) is None and buffer.nearest_stamp(FAR, 1e9) is None


def test_nearest_within_slop() -> None:
    buffer = StampedBuffer(span_s=1.0)
    for stamp in (0, 100, 200):
        buffer.add(stamp * MS, f'at {stamp}')
    assert buffer.nearest(110 * MS, 0.02) == 'at 100'
    assert buffer.nearest(190 * MS, 0.02) == 'at 200'
    assert buffer.nearest(0, 0.0) == 'at 0'
    assert buffer.nearest(150 * MS, 0.04) is None  # 50 ms from both neighbours
    assert buffer.nearest(260 * MS, 0.05) is None
    assert buffer.nearest_stamp(FAR, 1e9) == 200 * MS


def test_items_older_than_the_span_are_dropped() -> None:
    buffer = StampedBuffer(span_s=1.0)
    for stamp in (0, 700, 1500):
        buffer.add(stamp * MS, f'at {stamp}')
    assert buffer.nearest(0, 5.0) == 'at 700'  # 0 is 1.5 s before the newest
    buffer.add(200 * MS, 'late')  # arrives late and is already too old
    assert buffer.nearest(200 * MS, 0.1) is None


def test_at_most_max_items() -> None:
    buffer = StampedBuffer(span_s=10.0, max_items=3)
    for stamp in range(0, 500, 100):
        buffer.add(stamp * MS, f'at {stamp}')
    assert buffer.nearest(0, 5.0) == 'at 200'  # the oldest of the three kept
    assert buffer.nearest_stamp(FAR, 1e9) == 400 * MS


def test_out_of_order_adds() -> None:
    buffer = StampedBuffer(span_s=1.0)
    for stamp in (200, 0, 100):
        buffer.add(stamp * MS, f'at {stamp}')
    assert [buffer.nearest(stamp * MS, 0.01) for stamp in (0, 100, 200)] == \
        ['at 0', 'at 100', 'at 200']
    assert buffer.nearest_stamp(FAR, 1e9) == 200 * MS


def test_a_full_buffer_keeps_the_latest_stamps_when_adds_come_out_of_order() -> None:
    buffer = StampedBuffer(span_s=1.0, max_items=2)
    for stamp in (300, 100, 200):
        buffer.add(stamp * MS, f'at {stamp}')
    assert buffer.nearest_stamp(FAR, 1e9) == 300 * MS
    assert buffer.nearest(300 * MS, 0.01) == 'at 300'
    assert buffer.nearest(100 * MS, 0.01) is None


# --- summary wording ---


def test_position_words() -> None:
    assert position_words((-0.3, 0.0, 1.2)) == '1.2 m ahead, 0.3 m to the left'
    assert position_words((0.3, 0.4, 2.0)) == '2.0 m ahead, 0.3 m to the right'
    assert position_words((0.04, 0.0, 1.5)) == '1.5 m ahead'
    assert position_words((-0.04, 0.0, 1.5)) == '1.5 m ahead'


def test_summary_mentions_placed_and_unplaced_objects() -> None:
    cup = Detection('red cup', 0.8, 100.0, 240.0, 40.0, 60.0, position=(-0.3, 0.0, 1.2),
                    size=(0.08, 0.1, 0.0))
    bottle = Detection('bottle', 0.7, 600.0, 240.0, 30.0, 90.0)
    text = summarize('a kitchen table', [], [bottle, cup], WIDTH)
    assert 'a red cup 1.2 m ahead, 0.3 m to the left' in text
    assert 'one bottle on the right' in text
    assert 'Detected 2 objects' in text


def test_summary_of_a_placed_object_says_where_depth_put_it() -> None:
    rectangle = (60, 200, 140, 280)  # left of centre
    detection = place_all([_detection(rectangle, 'apple')], _raw(_scene(1.2, rectangle), '16UC1'),
                          _camera(), WIDTH, HEIGHT, MIN_DEPTH, MAX_DEPTH)
    x = _centre_point(rectangle, 1.2)[0]
    assert f'an apple 1.2 m ahead, {abs(x):.1f} m to the left' in summarize('', [], detection,
                                                                            WIDTH)
