"""Shapes-world objects drifting slowly and bouncing off the image edges (shapes_camera)."""

from dataclasses import replace

import numpy as np

from vlm_perception.shapes import world


class DriftingScene:
    """A shapes-world scene whose objects move at speed pixels per second."""

    def __init__(self, rng: np.random.Generator, width: int = 640, height: int = 480,
                 speed: float = 20.0) -> None:
        scene = world.sample_scene(rng, width, height)
        self.width, self.height = width, height
        self.background = scene.background
        self.objects = list(scene.objects)
        self._rng = rng
        angles = rng.uniform(0.0, 2 * np.pi, len(self.objects))
        self._velocity = speed * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (N, 2)
        self._position = np.array([[obj.x, obj.y] for obj in self.objects], dtype=float)

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
        return world.draw(self.objects, self.background, self.width, self.height, self._rng)

    @property
    def caption(self) -> str:
        """Ground-truth caption of the current objects."""
        return world.caption_of(self.objects)
