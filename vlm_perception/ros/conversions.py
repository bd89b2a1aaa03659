"""
Conversions between ROS messages and the core's numpy images and dataclasses.

cv_bridge is used for raw images where it is installed; otherwise the core's converter, which
views the message buffer without copying where the encoding allows. The message layouts are
the core's (vlm_perception.core.message_layout, which offline bag runs share), built here with
rclpy's generated classes.
"""

from functools import lru_cache
import importlib
from typing import Any, Callable, Optional, Sequence

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Quaternion, Vector3
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from vlm_perception import msg
from vlm_perception.core import image as core_image
from vlm_perception.core import message_layout as layout
from vlm_perception.core import types
from vlm_perception.core.depth import DepthImage, PinholeCamera, RigidTransform
from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import image_size, RGBImage
from vlm_perception.core.image import check_image_size
from vlm_perception.core.memory.entries import MemoryMatch
from vlm_perception.ros.diagnostics import DiagnosticReport, ERROR, OK, WARN
from vlm_perception.ros.visualization import label_colour

try:
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None
try:
    from vision_msgs.msg import Detection2D, Detection2DArray, Detection3DArray, \
        ObjectHypothesisWithPose
except ImportError:
    Detection2DArray = Detection3DArray = None

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}
SUMMARY_TEXT_HEIGHT = 0.08  # metres, in the camera frame
MASK_ENCODINGS = ('mono8', '8UC1')  # read back; masks are written as mono8
MIN_MARKER_SIZE = 0.01  # metres: a flat object's box stays visible in rviz
IDENTITY = RigidTransform((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))


@lru_cache(maxsize=None)
def _message_class(type_name: str) -> type:
    """Return rclpy's generated class of a type named in full ('sensor_msgs/msg/Image')."""
    package, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def make(type_name: str, **fields: Any) -> Any:
    """Return a message of a type named in full, as message_layout builds them (rclpy's)."""
    return _message_class(type_name)(**fields)


stamp_ns = layout.stamp_ns


def image_to_rgb(image: Image) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB pixels of a sensor_msgs/Image; InputError if unusable."""
    if CvBridge is None:
        return layout.read_rgb(image)
    check_image_size(image.height, image.width)
    try:
        return core_image.to_rgb(CvBridge().imgmsg_to_cv2(image, desired_encoding='rgb8'))
    except Exception as error:  # cv_bridge raises several types for bad images
        raise InputError(f'cannot convert {image.encoding} image: {error}') from error


def compressed_to_rgb(image: CompressedImage) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB pixels of a sensor_msgs/CompressedImage (see below)."""
    return decode_checked(checked_compressed_data(image))


def checked_compressed_data(image: CompressedImage) -> bytes:
    """
    Return the data of a CompressedImage whose header declares an acceptable size; InputError.

    Reads only the header: a few hundred bytes can claim gigabytes of pixels. Formats whose
    header is not read meet OpenCV's pixel limit when decoded instead.
    """
    if not image.data:
        raise InputError('empty compressed image')
    data = bytes(image.data)
    declared = core_image.compressed_size(data)
    if declared is not None:
        check_image_size(declared[1], declared[0])
    return data


def decode_checked(data: bytes, decode: Callable[[bytes], RGBImage] = core_image.decode_compressed
                   ) -> RGBImage:
    """
    Decode data from checked_compressed_data to pixels the node accepts; InputError.

    decode: decode_compressed (an RGB array), or a core_image.frame_decoder for the models'
    device (a tensor there for JPEG on CUDA).
    """
    pixels = decode(data)
    check_image_size(*image_size(pixels))
    return pixels


def depth_image(image: Image, depth_scale: float) -> DepthImage:
    """Return the depth of a 16UC1 / 32FC1 sensor_msgs/Image (viewing its data); InputError."""
    return layout.read_depth(image, depth_scale)


def pinhole_camera(info: Any) -> PinholeCamera:
    """Return the intrinsics of a sensor_msgs/CameraInfo; InputError when unusable."""
    return layout.read_camera(info)


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """Return an rgb8 sensor_msgs/Image of rgb (H, W, 3 uint8) with the given header."""
    return layout.rgb_image(make, rgb, header)


def mask_to_image(mask: Optional[np.ndarray], header: Optional[Header] = None) -> Image:
    """Return a mono8 Image of a (H, W) uint8 mask with the header; width 0 for none."""
    return layout.mask_image(make, mask, header)


def mask_from_image(image: Image) -> Optional[np.ndarray]:
    """Return the (H, W) uint8 pixels of a mono8 mask Image (a copy); None when empty."""
    if image.width == 0 or image.height == 0:
        return None
    if image.encoding not in MASK_ENCODINGS:
        raise InputError(f"mask encoding '{image.encoding}' is not mono8")
    return core_image.raw_pixels(image.data, image.height, image.width, 1, np.dtype('u1'),
                                 image.step, False, image.encoding)[:, :, 0].copy()


def detection_to_msg(detection: types.Detection,
                     header: Optional[Header] = None) -> msg.Detection:
    """
    Convert a core Detection; position, size and has_position where depth placed it.

    Its mask (mono8, width 0 for none) gets the header, the source image's.
    """
    return layout.detection(make, detection, header)


def detection_from_msg(detection: msg.Detection) -> types.Detection:
    """Convert a Detection message to the core dataclass (position, size and mask if any)."""
    position = size = None
    if detection.has_position:
        position = (detection.position.x, detection.position.y, detection.position.z)
        size = (detection.size.x, detection.size.y, detection.size.z)
    return types.Detection(detection.label, detection.score, detection.center_x,
                           detection.center_y, detection.size_x, detection.size_y, position, size,
                           mask_from_image(detection.mask))


def stamp_from_ns(stamp_ns: int) -> Time:
    """Return the builtin_interfaces Time of nanoseconds since the epoch."""
    return layout.time(make, stamp_ns)


def memory_match_to_msg(match: MemoryMatch) -> msg.SceneMemory:
    """Convert a recalled scene; its thumbnail (format jpeg) only where it was asked for."""
    header = Header(stamp=stamp_from_ns(match.stamp_ns), frame_id=match.frame_id)
    result = msg.SceneMemory(header=header, source=match.source, score=float(match.score),
                             caption=match.caption,
                             detections=[detection_to_msg(item, header)
                                         for item in match.detections])
    if match.thumbnail_jpeg:
        result.thumbnail = CompressedImage(header=header, format='jpeg',
                                           data=match.thumbnail_jpeg)
    return result


def detections_to_msg(detections: Sequence[types.Detection], header: Header) -> msg.DetectionArray:
    """Return a DetectionArray stamped with the source image's header."""
    return layout.detection_array(make, detections, header)


def scene_to_msg(scene: types.SceneDescription, header: Header) -> msg.SceneDescription:
    """Return a SceneDescription message stamped with the source image's header."""
    return layout.scene_description(make, scene, header)


def scene_from_msg(scene: msg.SceneDescription) -> types.SceneDescription:
    """Convert a SceneDescription message to the core dataclass (for printing as JSON)."""
    return types.SceneDescription(
        caption=scene.caption, summary=scene.summary,
        tags=[types.LabelScore(tag.label, tag.score) for tag in scene.tags],
        detections=[detection_from_msg(d) for d in scene.detections])


def answer_to_msg(question_id: str, question: str, header: Optional[Header],
                  answer: Optional[types.Answer] = None, error: str = '',
                  camera: str = '') -> msg.Answer:
    """Return an Answer message: the answer, or success false with the error."""
    result = msg.Answer(id=question_id, question=question, camera=camera,
                        success=answer is not None, error=error)
    if header is not None:
        result.header = header
    if answer is not None:
        result.answer, result.confidence = answer.answer, float(answer.confidence)
    return result


def _rgba(label: str, alpha: float = 1.0) -> ColorRGBA:
    red, green, blue = label_colour(label)
    return ColorRGBA(r=red / 255, g=green / 255, b=blue / 255, a=alpha)


def summary_marker(summary: str, header: Header) -> MarkerArray:
    """Return the summary as a text marker ahead of the camera, in the image's frame."""
    text = Marker(header=header, ns='summary', id=0, type=Marker.TEXT_VIEW_FACING,
                  action=Marker.ADD, text=summary, color=_rgba('summary'))
    # Camera optical frame: z forward, y down; the text floats above the view centre.
    text.pose.position = Point(x=0.0, y=-0.6, z=2.0)
    text.pose.orientation.w = 1.0
    text.scale.z = SUMMARY_TEXT_HEIGHT
    return MarkerArray(markers=[text])


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(sec=whole, nanosec=int((seconds - whole) * 1e9))


def _quaternion(transform: RigidTransform) -> Quaternion:
    x, y, z, w = transform.rotation
    return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))


def in_frame(detections: msg.DetectionArray, frame_id: str,
             transform: RigidTransform) -> msg.DetectionArray:
    """Return a copy of detections with positions moved by transform into frame_id."""
    header = Header(stamp=detections.header.stamp, frame_id=frame_id)
    moved = []
    for detection in detections.detections:
        copy = msg.Detection(label=detection.label, score=detection.score,
                             center_x=detection.center_x, center_y=detection.center_y,
                             size_x=detection.size_x, size_y=detection.size_y,
                             size=detection.size, has_position=detection.has_position,
                             mask=detection.mask)
        if detection.has_position:
            x, y, z = transform.apply((detection.position.x, detection.position.y,
                                       detection.position.z))
            copy.position = Point(x=x, y=y, z=z)
        moved.append(copy)
    return msg.DetectionArray(header=header, detections=moved)


def detection_markers(detections: msg.DetectionArray, lifetime: float,
                      transform: RigidTransform = IDENTITY) -> MarkerArray:
    """
    Return a box of its metric size and a text label for each placed detection.

    Positions are in the array's frame; transform is the one that brought them there from the
    camera frame, whose rotation turns the boxes (their sides follow the camera's axes).
    Markers expire after lifetime seconds, so boxes of objects no longer seen go away.
    """
    result = []
    placed = [d for d in detections.detections if d.has_position]
    for index, detection in enumerate(placed):
        box = Marker(header=detections.header, ns='detections', id=index, type=Marker.CUBE,
                     action=Marker.ADD, color=_rgba(detection.label, 0.5),
                     lifetime=_duration(lifetime))
        box.pose.position = detection.position
        box.pose.orientation = _quaternion(transform)
        box.scale = Vector3(x=max(detection.size.x, MIN_MARKER_SIZE),
                            y=max(detection.size.y, MIN_MARKER_SIZE),
                            z=max(detection.size.z, MIN_MARKER_SIZE))
        label = Marker(header=detections.header, ns='detection_labels', id=index,
                       type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                       text=f'{detection.label} {detection.score:.2f}',
                       color=_rgba(detection.label), lifetime=_duration(lifetime))
        label.pose.position = detection.position
        label.pose.orientation.w = 1.0
        label.scale.z = SUMMARY_TEXT_HEIGHT
        result += [box, label]
    return MarkerArray(markers=result)


def diagnostic_array(report: DiagnosticReport, stamp: Time, name: str,
                     hardware_id: str) -> DiagnosticArray:
    """Return a DiagnosticArray with one status made from report."""
    return diagnostic_statuses([(name, report)], stamp, hardware_id)


def diagnostic_statuses(reports: list[tuple[str, DiagnosticReport]], stamp: Time,
                        hardware_id: str) -> DiagnosticArray:
    """Return a DiagnosticArray with one status per (name, report), in order."""
    return DiagnosticArray(header=Header(stamp=stamp), status=[
        DiagnosticStatus(level=_LEVELS[report.level], name=name, message=report.message,
                         hardware_id=hardware_id,
                         values=[KeyValue(key=k, value=v) for k, v in report.values.items()])
        for name, report in reports])


def detections_2d(detections: msg.DetectionArray) -> Any:
    """Return a vision_msgs/Detection2DArray (class_id = label text); None without vision_msgs."""
    if Detection2DArray is None:
        return None
    result = Detection2DArray(header=detections.header)
    for detection in detections.detections:
        item = Detection2D(header=detections.header)
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = detection.label
        hypothesis.hypothesis.score = float(detection.score)
        item.results.append(hypothesis)
        item.bbox.center.position.x = float(detection.center_x)
        item.bbox.center.position.y = float(detection.center_y)
        item.bbox.size_x, item.bbox.size_y = float(detection.size_x), float(detection.size_y)
        result.detections.append(item)
    return result


def detections_3d(detections: msg.DetectionArray, transform: RigidTransform = IDENTITY) -> Any:
    """
    Return a vision_msgs/Detection3DArray of the placed detections; None without vision_msgs.

    class_id is the label text; bbox centre and size in metres, in the array's frame (the
    boxes turned by transform's rotation, as in detection_markers).
    """
    if Detection3DArray is None:
        return None
    return layout.detections_3d(make, layout.placed_detections(detections.detections),
                                detections.header, transform.rotation)
