"""
Shapes-world objects drifting slowly and bouncing off the image edges (shapes_camera).

Besides the RGB frames the scene has a 3D world seen by an ideal pinhole camera (REP 103
optical frame: x right, y down, z forward, metres): every object is a flat cut-out facing the
camera, of metric size s at distance z, with its pixel size = focal * s / z, in front of a
flat wall at BACKGROUND_DEPTH_M. depth_metres() and ground_truth() describe that world.
"""

from dataclasses import replace
import math
from typing import Sequence

import numpy as np

from vlm_perception.core.types import Detection
from vlm_perception.shapes import world

BACKGROUND_DEPTH_M = 5.0
SIZE_RANGE_M = (0.1, 0.4)
DISTANCE_RANGE_M = (0.8, 4.0)
MIN_DISTANCE_GAP_M = 0.15  # between any two objects, so depth tells them apart


def scene_rng(seed: int, index: int = 0) -> np.random.Generator:
    """
    Return the generator of scene ``index`` of ``seed``: shapes_camera's scenes, in order.

    Scene 0 is ``default_rng(seed)`` (as ever); scene n >= 1 draws from the seed sequence
    (seed, n), so that every scene of a seed is reproducible on its own.
    """
    if index < 0:
        raise ValueError(f'a scene index is >= 0, got {index}')
    return np.random.default_rng(seed if index == 0 else (seed, index))


def pinhole_k(width: int, height: int, fov: float) -> tuple[float, ...]:
    """
    Return the row-major 3x3 K of an ideal pinhole camera of fov horizontal degrees.

    Square pixels (fx = fy) and the principal point at the image centre, in camera_info's
    convention of pixel centres at whole numbers.
    """
    focal = width / (2 * math.tan(math.radians(fov) / 2))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return (focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0)


def _free_intervals(low: float, high: float,
                    taken: Sequence[float]) -> list[tuple[float, float]]:
    """Parts of [low, high] at least MIN_DISTANCE_GAP_M from every value of taken."""
    intervals = [(low, high)]
    for value in taken:
        cut_low, cut_high = value - MIN_DISTANCE_GAP_M, value + MIN_DISTANCE_GAP_M
        intervals = [part for a, b in intervals
                     for part in ((a, min(b, cut_low)), (max(a, cut_high), b))
                     if part[1] > part[0]]
    return intervals


def sample_distances(rng: np.random.Generator, pixel_sizes: Sequence[int],
                     focal: float) -> list[float]:
    """
    Draw each object's distance z (metres), one draw per object.

    z is uniform (so is the metric size s = z * px / focal) over the distances where
    s lies in SIZE_RANGE_M and z in DISTANCE_RANGE_M, less those within MIN_DISTANCE_GAP_M of
    an earlier object's. Where no distance is that far from the others, the gap is given up;
    where no size fits the distance range (extreme fov or image width), the size range is given
    up, so that objects stay in front of the wall.
    """
    distances: list[float] = []
    for pixels in pixel_sizes:
        low = max(DISTANCE_RANGE_M[0], focal * SIZE_RANGE_M[0] / pixels)
        high = min(DISTANCE_RANGE_M[1], focal * SIZE_RANGE_M[1] / pixels)
        if low > high:
            low, high = DISTANCE_RANGE_M
        intervals = _free_intervals(low, high, distances) or [(low, high)]
        offset = float(rng.uniform(0.0, sum(b - a for a, b in intervals)))
        for a, b in intervals:
            if offset <= b - a:
                break
            offset -= b - a
        distances.append(min(a + offset, b))
    return distances


class DriftingScene:
    """A shapes-world scene whose objects move at speed pixels per second, with a 3D world."""

    def __init__(self, rng: np.random.Generator, width: int = 640, height: int = 480,
                 speed: float = 20.0, fov: float = 60.0) -> None:
        scene = world.sample_scene(rng, width, height)
        self.width, self.height = width, height
        self.background = scene.background
        self.objects = list(scene.objects)
        self._rng = rng
        angles = rng.uniform(0.0, 2 * np.pi, len(self.objects))
        self._velocity = speed * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (N, 2)
        self._position = np.array([[obj.x, obj.y] for obj in self.objects], dtype=float)
        self.k = pinhole_k(width, height, fov)
        # A child generator: the 3D draws leave rng's stream, so the frames' noise, as it was.
        try:
            depth_rng = rng.spawn(1)[0]
        except TypeError:  # a bit generator without a spawnable seed sequence
            depth_rng = rng
        # Fixed per object: the pixel size never changes, so neither do z and s.
        self.distances = sample_distances(depth_rng, [obj.size for obj in self.objects],
                                          self.k[0])
        self.metric_sizes = [z * obj.size / self.k[0]
                             for obj, z in zip(self.objects, self.distances)]

    def step(self, seconds: float) -> np.ndarray:
        """Move the objects by seconds of drift and return the rendered (H, W, 3) RGB image."""
        sizes = np.array([obj.size for obj in self.objects], dtype=float)  # (N,)
        limits = np.stack([self.width - sizes, self.height - sizes], axis=1)  # (N, 2)
        self._position += self._velocity * seconds
        below, above = self._position < 0, self._position > limits
        self._velocity[below | above] *= -1
        self._position = np.clip(self._position, 0, limits)
        self.objects = [replace(obj, x=int(round(x)), y=int(round(y)))
                        for obj, (x, y) in zip(self.objects, self._position)]
        # Far to near, so that where drifting objects overlap the nearer hides the farther, as
        # in depth_metres(); without overlaps the order changes nothing.
        return world.draw([self.objects[i] for i in self._far_to_near()], self.background,
                          self.width, self.height, self._rng)

    def _far_to_near(self) -> list[int]:
        """Return the indices of the objects, farthest first (stable for equal distances)."""
        return sorted(range(len(self.objects)), key=lambda i: -self.distances[i])

    def depth_metres(self) -> np.ndarray:
        """
        Return the (H, W) float32 depth in metres, registered to the last step()'s image.

        The wall is at BACKGROUND_DEPTH_M; each object's distance covers the pixels whose
        centres lie inside its shape (world.inside_shape over its box), the nearest object
        where they overlap.
        """
        depth = np.full((self.height, self.width), BACKGROUND_DEPTH_M, dtype=np.float32)
        for index in self._far_to_near():
            obj = self.objects[index]
            # pixel centres in box units (0..1 across the box's continuous extent); cv2's
            # antialiased fill covers about that area, so this matches the drawn shape to
            # within the antialiased edge, and a square covers its whole box
            units = (np.arange(obj.size, dtype=np.float64) + 0.5) / obj.size
            inside = world.inside_shape(obj.shape, units[None, :], units[:, None])
            box = depth[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size]  # a view
            box[inside] = self.distances[index]
        return depth

    def ground_truth(self) -> list[Detection]:
        """
        Return one Detection per object (as of the last step()), in the objects' order.

        Label the object's name, score 1, the box in continuous pixels, position its centre in
        the optical frame (the box centre back-projected at its distance) and size its metric
        (s, s, 0): the objects are flat.
        """
        fx, _, cx, _, fy, cy = self.k[:6]
        truth = []
        for obj, z, s in zip(self.objects, self.distances, self.metric_sizes):
            u, v = obj.x + (obj.size - 1) / 2, obj.y + (obj.size - 1) / 2  # K's pixel centres
            truth.append(Detection(
                label=obj.name, score=1.0, center_x=obj.x + obj.size / 2,
                center_y=obj.y + obj.size / 2, size_x=float(obj.size), size_y=float(obj.size),
                position=((u - cx) * z / fx, (v - cy) * z / fy, z), size=(s, s, 0.0)))
        return truth

    @property
    def caption(self) -> str:
        """Ground-truth caption of the current objects."""
        return world.caption_of(self.objects)
