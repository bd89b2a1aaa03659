"""Bag tests' helpers: recordings read back, detections as comparable rows, vision_msgs defs."""

from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import Reader

from vlm_perception.core import message_layout as layout
from vlm_perception.core.depth import place_all
from vlm_perception.core.types import Detection

# vision_msgs 4.x (ROS 2 Humble on), the types a Detection3DArray needs, for a share/ of its own
VISION_MSGS = {
    'ObjectHypothesis': 'string class_id\nfloat64 score\n',
    'ObjectHypothesisWithPose': 'ObjectHypothesis hypothesis\n'
                                'geometry_msgs/PoseWithCovariance pose\n',
    'BoundingBox3D': 'geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n',
    'Detection3D': 'std_msgs/Header header\nObjectHypothesisWithPose[] results\n'
                   'BoundingBox3D bbox\nstring id\n',
    'Detection3DArray': 'std_msgs/Header header\nDetection3D[] detections\n',
}


def vision_msgs_prefix(root: Path) -> Path:
    """Write share/vision_msgs/msg/*.msg under root, as an install prefix; return root."""
    folder = root / 'share' / 'vision_msgs' / 'msg'
    folder.mkdir(parents=True)
    for name, text in VISION_MSGS.items():
        (folder / f'{name}.msg').write_text(text)
    return root


def read_bag(path: Path, types: Any) -> dict[str, list[tuple[int, Any, bytes]]]:
    """Return each topic's (log time, message, CDR bytes), in order, read with rosbags."""
    topics: dict[str, list[tuple[int, Any, bytes]]] = {}
    with Reader(path) as reader:
        for connection, log_ns, data in reader.messages():
            message = types.deserialize(data, connection.msgtype)
            topics.setdefault(connection.topic, []).append((log_ns, message, bytes(data)))
    return topics


def message_rows(array: Any) -> list[tuple]:
    """Return label, score, box and position (None when unplaced) per Detection message."""
    return [(item.label, item.score, item.center_x, item.center_y, item.size_x, item.size_y,
             (item.position.x, item.position.y, item.position.z) if item.has_position else None)
            for item in array.detections]


def core_rows(detections: list[Detection]) -> list[tuple]:
    """Return message_rows' values of core detections, rounded as float32 fields are."""
    f32 = np.float32
    return [(item.label, f32(item.score), f32(item.center_x), f32(item.center_y),
             f32(item.size_x), f32(item.size_y), item.position) for item in detections]


def engine_detections(engine: Any, image: Any, depth: Any = None, camera: Any = None,
                      min_depth: float = 0.1, max_depth: float = 10.0) -> list[Detection]:
    """Return what the engine detects on an Image message, placed with depth where given."""
    rgb = layout.read_rgb(image)
    detections = engine.detect(engine.frame(rgb.copy()))
    if depth is None:
        return detections
    return place_all(detections, layout.read_depth(depth, 0.001), layout.read_camera(camera),
                     rgb.shape[1], rgb.shape[0], min_depth, max_depth)
