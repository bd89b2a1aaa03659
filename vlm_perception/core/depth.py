"""
Depth geometry without ROS: camera model, depth images, robust object depth, 3D placement.

Positions follow REP 103's optical convention (x right, y down, z forward, metres). Pixel
coordinates of boxes are continuous (the image spans 0..width); the camera matrix K uses pixel
centres at whole numbers, as ROS camera_info does, so a box centre u is u - 0.5 in K's terms.
"""

from collections import deque
from dataclasses import dataclass, replace
import math
import threading
from typing import Generic, Optional, Sequence, TypeVar

import numpy as np

from vlm_perception.core.errors import InputError
from vlm_perception.core.image import raw_pixels
from vlm_perception.core.types import Detection, Vector

# Distortion models whose coefficients OpenCV's undistortPoints takes as they are.
UNDISTORTED_MODELS = ('plumb_bob', 'rational_polynomial')
OPENCV_D_LENGTHS = (4, 5, 8, 12, 14)
# OpenCV's default of 5 iterations leaves about a pixel of error at wide-angle image corners.
UNDISTORT_CRITERIA = (3, 100, 1e-10)  # cv2.TERM_CRITERIA_COUNT | EPS, iterations, epsilon
DEPTH_ENCODINGS = {'16UC1': np.dtype('u2'), 'mono16': np.dtype('u2'), '32FC1': np.dtype('f4')}
INNER_FRACTION = 0.5       # the central half of a box (each way) gives an object's depth
MIN_VALID_FRACTION = 0.1   # of that inner part, with at least one pixel
SPREAD_PERCENTILES = (10.0, 90.0)
# A box's pixels within this fraction of the object's width of its depth are the object.
OBJECT_BAND_FRACTION, MIN_OBJECT_BAND_M = 0.5, 0.02
SEARCH_MARGIN = 0.25  # of the box's size on each side: a tight box may cut the object

Item = TypeVar('Item')


@dataclass(frozen=True)
class PinholeCamera:
    """A camera_info's intrinsics: K (row-major 3x3), image size, distortion model and D."""

    k: tuple[float, ...]
    width: int
    height: int
    distortion_model: str = ''
    d: tuple[float, ...] = ()

    @classmethod
    def from_values(cls, k: Sequence[float], width: int, height: int,
                    distortion_model: str = '', d: Sequence[float] = ()) -> 'PinholeCamera':
        """Validate camera_info values; InputError for zero, non-finite or skewed intrinsics."""
        k = tuple(float(value) for value in k)
        d = tuple(float(value) for value in d)
        if len(k) != 9 or not all(math.isfinite(value) for value in k + d):
            raise InputError('camera matrix K must be 9 finite numbers (and D finite)')
        fx, fy = k[0], k[4]
        if fx <= 0 or fy <= 0 or k[8] != 1.0 or k[3] != 0.0 or k[6] != 0.0 or k[7] != 0.0:
            raise InputError(f'camera matrix K {list(k)} is not a pinhole matrix '
                             '(fx, fy > 0, last row 0 0 1)')
        if width < 0 or height < 0 or (width == 0) != (height == 0):
            raise InputError(f'camera_info size {width}x{height} is not an image size')
        if any(d) and distortion_model in UNDISTORTED_MODELS and len(d) not in OPENCV_D_LENGTHS:
            raise InputError(f'{distortion_model} distortion needs 4, 5, 8, 12 or 14 '
                             f'coefficients, got {len(d)}')
        return cls(k, int(width), int(height), distortion_model, d)

    @property
    def distortion_supported(self) -> bool:
        """Whether D is applied (plumb_bob, rational_polynomial) rather than ignored."""
        return self.distortion_model in UNDISTORTED_MODELS or not any(self.d)

    def for_image(self, width: int, height: int) -> 'PinholeCamera':
        """Return the camera for an image of another size (same field of view); K scaled."""
        if (self.width, self.height) in ((width, height), (0, 0)):
            return replace(self, width=width, height=height)
        sx, sy = width / self.width, height / self.height
        fx, skew, cx, _, fy, cy = self.k[:6]
        k = (fx * sx, skew * sx, (cx + 0.5) * sx - 0.5, 0.0, fy * sy, (cy + 0.5) * sy - 0.5,
             0.0, 0.0, 1.0)
        return replace(self, k=k, width=width, height=height)

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Return (N, 2) normalised image coordinates (x / z, y / z) of continuous pixels."""
        points = np.stack([np.asarray(u, np.float64) - 0.5,
                           np.asarray(v, np.float64) - 0.5], axis=-1).reshape(-1, 2)
        if any(self.d) and self.distortion_model in UNDISTORTED_MODELS:
            import cv2

            matrix = np.array(self.k, dtype=np.float64).reshape(3, 3)
            coefficients = np.array(self.d, dtype=np.float64)
            if hasattr(cv2, 'undistortPointsIter'):  # OpenCV 4 takes criteria only here
                rays = cv2.undistortPointsIter(points[:, None, :], matrix, coefficients, None,
                                               None, UNDISTORT_CRITERIA)
            else:
                rays = cv2.undistortPoints(points[:, None, :], matrix, coefficients,
                                           criteria=UNDISTORT_CRITERIA)
            return rays.reshape(-1, 2)
        fx, skew, cx, _, fy, cy = self.k[:6]
        y = (points[:, 1] - cy) / fy
        x = (points[:, 0] - cx - skew * y) / fx
        return np.stack([x, y], axis=1)


@dataclass(frozen=True)
class DepthImage:
    """
    A depth image: (H, W) values as the sensor sent them and the metres one unit stands for.

    The values stay in their own type (uint16 millimetres are half the size of float metres);
    0 or NaN means the sensor saw nothing there.
    """

    values: np.ndarray
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return self.values.shape[:2]

    def metres(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Return a window of the image in metres, float32."""
        window = self.values[top:bottom, left:right].astype(np.float32)
        return window if self.scale == 1.0 else window * np.float32(self.scale)


def depth_from_raw(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
                   encoding: str, step: int, is_bigendian: bool = False,
                   depth_scale: float = 0.001) -> DepthImage:
    """
    Read a raw depth image: 16UC1 (or mono16) in units of depth_scale metres, 32FC1 in metres.

    The values view data where the byte order allows. Anything else is an InputError.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(f"depth encoding '{encoding}' is not supported "
                         f"({', '.join(DEPTH_ENCODINGS)})")
    dtype = DEPTH_ENCODINGS[encoding]
    values = raw_pixels(data, height, width, 1, dtype, step, is_bigendian, encoding)[:, :, 0]
    return DepthImage(values, float(depth_scale) if dtype.kind == 'u' else 1.0)


@dataclass(frozen=True)
class Placement:
    """Where an object is: centre and metric size (x, y, z) in the camera's optical frame."""

    position: Vector
    size: Vector


def place(detection: Detection, depth: DepthImage, camera: PinholeCamera, image_width: int,
          image_height: int, min_depth: float, max_depth: float) -> Optional[Placement]:
    """
    Place a detection (box in pixels of an image_width x image_height image) in 3D.

    The depth image may have another resolution with the same field of view; camera is the
    colour image's. The object's depth is the median of the valid depths (finite, within
    min_depth..max_depth) in the central half of its box; None when too few are valid, never
    a made-up point. The object itself is the box's pixels within half its width of that depth
    (so background seen around a round object, or beside it in a loose box, does not count);
    searched a little beyond the box (SEARCH_MARGIN), since a tight box may cut the object:
    its centre and its size x, y come from their extent at that depth, size z is the
    10th-90th percentile spread of their depths.

    With a mask (Detection.mask, as a segmenter gives it) only the mask's pixels count: the
    depth is the median of their valid depths and the object is those of them within the band;
    an empty mask, or one not of the box's pixel_window shape, places as without a mask.
    """
    scale_x, scale_y = depth.shape[1] / image_width, depth.shape[0] / image_height
    x0, y0, x1, y1 = detection.box
    masked = _masked_window(detection, depth, image_width, image_height, scale_x, scale_y)
    if masked is None:
        inner = _valid(_window(depth, x0, y0, x1, y1, scale_x, scale_y, INNER_FRACTION)[0],
                       min_depth, max_depth)
    else:
        depths, left, top, in_mask = masked
        depths = _valid(depths, min_depth, max_depth)
        inner = depths[in_mask]
    valid = inner[np.isfinite(inner)]
    if valid.size < max(1, MIN_VALID_FRACTION * inner.size):
        return None
    z = float(np.median(valid))
    camera = camera.for_image(image_width, image_height)
    width_m, _ = _extent(camera, x0, y0, x1, y1, z)
    if masked is None:
        depths, left, top = _window(depth, x0, y0, x1, y1, scale_x, scale_y,
                                    1 + 2 * SEARCH_MARGIN)
        depths = _valid(depths, min_depth, max_depth)
        in_mask = np.ones(depths.shape, dtype=bool)
    near = (np.abs(depths - z) <= max(OBJECT_BAND_FRACTION * width_m, MIN_OBJECT_BAND_M)) & \
        in_mask
    if near.any():  # NaN compares false: invalid depths are never the object
        (cols,), (rows,) = np.nonzero(near.any(axis=0)), np.nonzero(near.any(axis=1))
        x0, x1 = (left + cols[0]) / scale_x, (left + cols[-1] + 1) / scale_x
        y0, y1 = (top + rows[0]) / scale_y, (top + rows[-1] + 1) / scale_y
        low, high = np.percentile(depths[near], SPREAD_PERCENTILES)
    else:
        low = high = z
    width_m, height_m = _extent(camera, x0, y0, x1, y1, z)
    (ray_x, ray_y), = camera.rays(np.array([(x0 + x1) / 2]), np.array([(y0 + y1) / 2]))
    return Placement((float(ray_x) * z, float(ray_y) * z, z),
                     (width_m, height_m, float(high - low)))


def _extent(camera: PinholeCamera, x0: float, y0: float, x1: float, y1: float,
            z: float) -> tuple[float, float]:
    """Return the metric width and height at depth z of a box (continuous image pixels)."""
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    rays = camera.rays(np.array([x0, x1, centre_x, centre_x]),
                       np.array([centre_y, centre_y, y0, y1]))  # left, right, top, bottom
    return float(rays[1, 0] - rays[0, 0]) * z, float(rays[3, 1] - rays[2, 1]) * z


def _window(depth: DepthImage, x0: float, y0: float, x1: float, y1: float, scale_x: float,
            scale_y: float, fraction: float) -> tuple[np.ndarray, int, int]:
    """Return the depths (m) of pixels centred in a box's central fraction; left col, top row."""
    margin_x, margin_y = (x1 - x0) * (1 - fraction) / 2, (y1 - y0) * (1 - fraction) / 2
    height, width = depth.shape
    left = min(max(int(math.ceil((x0 + margin_x) * scale_x - 0.5)), 0), width)
    right = min(max(int(math.floor((x1 - margin_x) * scale_x - 0.5)) + 1, left), width)
    top = min(max(int(math.ceil((y0 + margin_y) * scale_y - 0.5)), 0), height)
    bottom = min(max(int(math.floor((y1 - margin_y) * scale_y - 0.5)) + 1, top), height)
    return depth.metres(top, bottom, left, right), left, top


def _masked_window(detection: Detection, depth: DepthImage, image_width: int,
                   image_height: int, scale_x: float,
                   scale_y: float) -> Optional[tuple[np.ndarray, int, int, np.ndarray]]:
    """
    Return the depths (m) centred in the box, left col, top row, and which the mask covers.

    A depth pixel takes the mask's value at the image pixel under its centre. None when the
    detection has no mask, an empty one, or one not covering the box's pixel_window.
    """
    mask = detection.mask
    left, top, right, bottom = detection.pixel_window(image_width, image_height)
    if mask is None or mask.shape != (bottom - top, right - left) or not mask.any():
        return None
    x0, y0, x1, y1 = detection.box
    depths, depth_left, depth_top = _window(depth, x0, y0, x1, y1, scale_x, scale_y, 1.0)
    # A centre on the box's far edge (a whole-pixel x1) falls just past the mask: clipped.
    columns = np.clip(np.floor((depth_left + np.arange(depths.shape[1]) + 0.5) / scale_x)
                      .astype(int) - left, 0, mask.shape[1] - 1)
    rows = np.clip(np.floor((depth_top + np.arange(depths.shape[0]) + 0.5) / scale_y)
                   .astype(int) - top, 0, mask.shape[0] - 1)
    return depths, depth_left, depth_top, mask[rows[:, None], columns[None, :]] > 0


def _valid(depths: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Return the depths with everything outside min_depth..max_depth (and 0) as NaN."""
    return np.where((depths > 0) & (depths >= min_depth) & (depths <= max_depth), depths,
                    np.float32(np.nan))


def place_all(detections: Sequence[Detection], depth: Optional[DepthImage],
              camera: Optional[PinholeCamera], image_width: int, image_height: int,
              min_depth: float, max_depth: float) -> list[Detection]:
    """Return the detections with position and size set where depth places them."""
    if depth is None or camera is None:
        return list(detections)
    placed = []
    for detection in detections:
        placement = place(detection, depth, camera, image_width, image_height, min_depth,
                          max_depth)
        placed.append(detection if placement is None else
                      replace(detection, position=placement.position, size=placement.size))
    return placed


@dataclass(frozen=True)
class RigidTransform:
    """A transform from one frame to another: translation (m) and unit quaternion (x, y, z, w)."""

    translation: Vector
    rotation: tuple[float, float, float, float]

    def matrix(self) -> np.ndarray:
        """Return the 3x3 rotation matrix."""
        x, y, z, w = self.rotation
        norm = math.sqrt(x * x + y * y + z * z + w * w)
        if not math.isfinite(norm) or norm == 0:
            raise InputError(f'transform rotation {self.rotation} is not a quaternion')
        x, y, z, w = x / norm, y / norm, z / norm, w / norm
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    def apply(self, point: Vector) -> Vector:
        """Return point expressed in the target frame."""
        moved = self.matrix() @ np.asarray(point, dtype=np.float64) + np.asarray(self.translation)
        return (float(moved[0]), float(moved[1]), float(moved[2]))


class StampedBuffer(Generic[Item]):
    """The latest items by stamp: at most max_items, none older than span_s before the newest."""

    def __init__(self, span_s: float = 1.0, max_items: int = 30) -> None:
        """Keep at most max_items items, spanning at most span_s seconds of stamps."""
        self.span_ns = int(span_s * 1e9)
        self._items: deque[tuple[int, Item]] = deque(maxlen=max_items)
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, item: Item) -> None:
        """Keep item; drop what falls out of the span."""
        with self._lock:
            items = sorted([*self._items, (stamp_ns, item)], key=lambda entry: entry[0])
            newest = items[-1][0]
            kept = [entry for entry in items if entry[0] >= newest - self.span_ns]
            self._items = deque(kept[-self._items.maxlen:], maxlen=self._items.maxlen)

    def nearest(self, stamp_ns: int, slop_s: float) -> Optional[Item]:
        """Return the item nearest in stamp to stamp_ns, if within slop_s seconds; else None."""
        entry = self._nearest(stamp_ns, slop_s)
        return None if entry is None else entry[1]

    def nearest_stamp(self, stamp_ns: int, slop_s: float) -> Optional[int]:
        """Return the stamp of the item nearest to stamp_ns, if within slop_s seconds."""
        entry = self._nearest(stamp_ns, slop_s)
        return None if entry is None else entry[0]

    def _nearest(self, stamp_ns: int, slop_s: float) -> Optional[tuple[int, Item]]:
        with self._lock:
            if not self._items:
                return None
            entry = min(self._items, key=lambda entry: abs(entry[0] - stamp_ns))
        return entry if abs(entry[0] - stamp_ns) <= slop_s * 1e9 else None
