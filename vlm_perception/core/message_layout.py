"""
The package's ROS message layouts, from and to the core's results, for any message library.

The builders take ``make(type_name, **fields)``, which returns a message of a ROS 2 type named in
full ('vlm_perception/msg/Detection', 'sensor_msgs/msg/Image'): vlm_perception.ros.conversions
passes one that builds rclpy's generated classes, vlm_perception.bag one that builds a rosbags
typestore's. A live node and an offline bag run so write the same messages, field for field.
The readers take any object with a message's fields (rclpy's or rosbags' alike).

Nothing here imports a message module or rclpy.
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np

from vlm_perception.core.depth import depth_from_raw, DepthImage, PinholeCamera
from vlm_perception.core.image import check_image_size, from_raw
from vlm_perception.core.types import Detection, SceneDescription

# make(type_name, **fields) -> a message of that type, the fields not given at their defaults
Make = Callable[..., Any]
IDENTITY_ROTATION = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w
IDENTITY_3X3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def stamp_ns(stamp: Any) -> int:
    """Return the nanoseconds of a builtin_interfaces/Time."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def time(make: Make, nanoseconds: int) -> Any:
    """Return the builtin_interfaces/Time of nanoseconds since the epoch."""
    sec, nanosec = divmod(int(nanoseconds), 1_000_000_000)
    return make('builtin_interfaces/msg/Time', sec=sec, nanosec=nanosec)


def header(make: Make, nanoseconds: int, frame_id: str) -> Any:
    """Return a std_msgs/Header of a stamp in nanoseconds and a frame_id."""
    return make('std_msgs/msg/Header', stamp=time(make, nanoseconds), frame_id=frame_id)


def rgb_image(make: Make, rgb: np.ndarray, header: Any) -> Any:
    """Return an rgb8 sensor_msgs/Image of rgb (H, W, 3 uint8) with the given header."""
    height, width = rgb.shape[:2]
    return make('sensor_msgs/msg/Image', header=header, height=height, width=width,
                encoding='rgb8', is_bigendian=0, step=width * 3,
                data=np.ascontiguousarray(rgb).tobytes())


def mask_image(make: Make, mask: Optional[np.ndarray], header: Any = None) -> Any:
    """Return a mono8 sensor_msgs/Image of a (H, W) uint8 mask; width 0 for none."""
    header = make('std_msgs/msg/Header') if header is None else header
    if mask is None or mask.size == 0:
        return make('sensor_msgs/msg/Image', header=header, encoding='mono8')
    height, width = mask.shape[:2]
    return make('sensor_msgs/msg/Image', header=header, height=height, width=width,
                encoding='mono8', is_bigendian=0, step=width,
                data=np.ascontiguousarray(mask, dtype=np.uint8).tobytes())


def depth_image(make: Make, metres: np.ndarray, header: Any) -> Any:
    """Return a 16UC1 sensor_msgs/Image of (H, W) depths in metres: millimetres, rounded."""
    height, width = metres.shape
    millimetres = np.clip(np.rint(metres * 1000.0), 0, np.iinfo(np.uint16).max).astype('<u2')
    return make('sensor_msgs/msg/Image', header=header, height=height, width=width,
                encoding='16UC1', is_bigendian=0, step=width * 2, data=millimetres.tobytes())


def pinhole_camera_info(make: Make, header: Any, width: int, height: int,
                        k: Sequence[float]) -> Any:
    """Return the sensor_msgs/CameraInfo of an ideal pinhole camera of matrix K (no distortion)."""
    fx, _, cx, _, fy, cy = (float(value) for value in k[:6])
    return make('sensor_msgs/msg/CameraInfo', header=header, width=width, height=height,
                distortion_model='plumb_bob', d=[0.0] * 5, k=[float(value) for value in k],
                r=list(IDENTITY_3X3),
                p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def _point(make: Make, xyz: Sequence[float], type_name: str = 'geometry_msgs/msg/Point') -> Any:
    return make(type_name, x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def detection(make: Make, item: Detection, header: Any = None) -> Any:
    """
    Return a vlm_perception/Detection; position, size and has_position where depth placed it.

    Its mask (mono8, width 0 for none) gets the header, the source image's.
    """
    placed = item.position is not None and item.size is not None
    return make('vlm_perception/msg/Detection', label=item.label, score=float(item.score),
                center_x=float(item.center_x), center_y=float(item.center_y),
                size_x=float(item.size_x), size_y=float(item.size_y),
                position=_point(make, item.position if placed else (0.0, 0.0, 0.0)),
                size=_point(make, item.size if placed else (0.0, 0.0, 0.0),
                            'geometry_msgs/msg/Vector3'),
                has_position=placed, mask=mask_image(make, item.mask, header))


def detection_array(make: Make, detections: Sequence[Detection], header: Any) -> Any:
    """Return a vlm_perception/DetectionArray stamped with the source image's header."""
    return make('vlm_perception/msg/DetectionArray', header=header,
                detections=[detection(make, item, header) for item in detections])


def scene_description(make: Make, scene: SceneDescription, header: Any) -> Any:
    """Return a vlm_perception/SceneDescription stamped with the source image's header."""
    return make('vlm_perception/msg/SceneDescription', header=header, caption=scene.caption,
                summary=scene.summary,
                tags=[make('vlm_perception/msg/LabelScore', label=tag.label,
                           score=float(tag.score)) for tag in scene.tags],
                detections=[detection(make, item, header) for item in scene.detections])


def detections_3d(make: Make, detections: Sequence[Detection], header: Any,
                  rotation: Sequence[float] = IDENTITY_ROTATION) -> Any:
    """
    Return a vision_msgs/Detection3DArray of the placed detections (the others are left out).

    class_id is the label text; bbox centre and size in metres, in the header's frame, the
    boxes turned by rotation (x, y, z, w: that of the transform which brought the positions
    into the frame; their sides follow the camera's axes).
    """
    result = []
    for item in detections:
        if item.position is None or item.size is None:
            continue
        orientation = make('geometry_msgs/msg/Quaternion',
                           **{axis: float(value) for axis, value in zip('xyzw', rotation)})
        pose = make('geometry_msgs/msg/Pose', position=_point(make, item.position),
                    orientation=orientation)
        hypothesis = make('vision_msgs/msg/ObjectHypothesisWithPose',
                          hypothesis=make('vision_msgs/msg/ObjectHypothesis',
                                          class_id=item.label, score=float(item.score)),
                          pose=make('geometry_msgs/msg/PoseWithCovariance', pose=pose))
        result.append(make('vision_msgs/msg/Detection3D', header=header, results=[hypothesis],
                           bbox=make('vision_msgs/msg/BoundingBox3D', center=pose,
                                     size=_point(make, item.size,
                                                 'geometry_msgs/msg/Vector3'))))
    return make('vision_msgs/msg/Detection3DArray', header=header, detections=result)


def placed_detections(detections: Sequence[Any]) -> list[Detection]:
    """Return core Detections (no masks) of the placed vlm_perception/Detection messages."""
    return [Detection(item.label, item.score, item.center_x, item.center_y, item.size_x,
                      item.size_y, (item.position.x, item.position.y, item.position.z),
                      (item.size.x, item.size.y, item.size.z))
            for item in detections if item.has_position]


def read_rgb(image: Any) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB pixels of a raw sensor_msgs/Image; InputError if unusable."""
    check_image_size(image.height, image.width)
    return from_raw(image.data, image.height, image.width, image.encoding, image.step,
                    bool(image.is_bigendian))


def read_depth(image: Any, depth_scale: float) -> DepthImage:
    """Return the depth of a 16UC1 / 32FC1 sensor_msgs/Image (viewing its data); InputError."""
    check_image_size(image.height, image.width)
    return depth_from_raw(image.data, image.height, image.width, image.encoding, image.step,
                          bool(image.is_bigendian), depth_scale)


def read_camera(info: Any) -> PinholeCamera:
    """Return the intrinsics of a sensor_msgs/CameraInfo; InputError when unusable."""
    return PinholeCamera.from_values(info.k, info.width, info.height, info.distortion_model,
                                     info.d)
