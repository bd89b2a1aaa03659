"""
A seeded shapes-world recording, as shapes_camera publishes it: ``record_shapes``.

Topics (under ``namespace``; the root by default, the node's default topics): image (rgb8),
camera_info (ideal pinhole, no distortion), depth (16UC1 millimetres, registered) and
ground_truth (vlm_perception/DetectionArray), each frame with one header, logged at its stamp.
The same seed gives the same frames: stamps start at START_NS and follow the rate.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from vlm_perception.core import message_layout as layout
from vlm_perception.core.errors import InputError
from vlm_perception.shapes.drift import DriftingScene

START_NS = 1_704_067_200 * 1_000_000_000  # 2024-01-01T00:00:00Z
TOPICS = {'image': 'sensor_msgs/msg/Image', 'camera_info': 'sensor_msgs/msg/CameraInfo',
          'depth': 'sensor_msgs/msg/Image', 'ground_truth': 'vlm_perception/msg/DetectionArray'}


@dataclass
class ShapesRecording:
    """What to record; the camera's defaults are shapes_camera's parameters' defaults."""

    frames: int = 100
    storage: str = 'mcap'
    seed: int = 0
    rate: float = 10.0        # Hz
    width: int = 640
    height: int = 480
    fov: float = 60.0         # horizontal degrees
    speed: float = 20.0       # pixels per second of drift
    frame_id: str = 'camera_optical_frame'
    namespace: str = ''       # topics <namespace>/image, ...

    def checked(self) -> 'ShapesRecording':
        """Return self; InputError for a value out of shapes_camera's ranges."""
        checks = (('frames', 1 <= self.frames, '>= 1'),
                  ('rate', 0.1 <= self.rate <= 120, '0.1..120'),
                  ('width', 64 <= self.width <= 4096, '64..4096'),
                  ('height', 64 <= self.height <= 4096, '64..4096'),
                  ('fov', 1 <= self.fov <= 179, '1..179 degrees'),
                  ('speed', 0 <= self.speed <= 1000, '0..1000'),
                  ('seed', 0 <= self.seed < 2**31, '0..2^31-1'))
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f'{name} must be {expected}, got {getattr(self, name)}')
        return self


def record_shapes(out: str | Path, settings: Optional[ShapesRecording] = None,
                  types: Any = None,
                  progress: Callable[[int, int], None] = lambda done, total: None,
                  should_stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """
    Write a shapes-world recording to out; return the messages written per topic.

    ``types``: the BagTypes to use (default: load_types()); ``progress(done, total)`` is
    called after each frame, ``should_stop`` asked before each (the recording then ends there,
    valid).
    """
    from vlm_perception.bag.typestore import load_types  # rosbags, once a bag is written
    from vlm_perception.bag.writer import OutputBag, qos

    settings = (settings or ShapesRecording()).checked()
    types = types or load_types()
    scene = DriftingScene(np.random.default_rng(settings.seed), settings.width,
                          settings.height, settings.speed, settings.fov)
    namespace = settings.namespace.strip().strip('/')
    bag = OutputBag(out, settings.storage, types)
    connections = {name: bag.add_topic(f'/{namespace}/{name}' if namespace else f'/{name}',
                                       kind, qos(1)) for name, kind in TOPICS.items()}
    period = 1.0 / settings.rate
    make = types.make
    try:
        for index in range(settings.frames):
            if should_stop():
                break
            stamp = START_NS + round(index * period * 1e9)
            rgb = scene.step(period)
            header = layout.header(make, stamp, settings.frame_id)
            messages = {
                'image': layout.rgb_image(make, rgb, header),
                'camera_info': layout.pinhole_camera_info(make, header, settings.width,
                                                          settings.height, scene.k),
                'depth': layout.depth_image(make, scene.depth_metres(), header),
                'ground_truth': layout.detection_array(make, scene.ground_truth(), header)}
            for name, message in messages.items():
                bag.queue_message(connections[name], stamp, message)
            bag.flush()
            progress(index + 1, settings.frames)
    finally:
        bag.close()
    return dict(bag.counts)
