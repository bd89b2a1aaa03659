"""Message conversions of the node, on in-memory messages (no graph, no models)."""

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from builtin_interfaces.msg import Time  # noqa: E402,I100
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import Point, Vector3  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from vlm_perception import msg  # noqa: E402
from vlm_perception.core.errors import InputError  # noqa: E402
from vlm_perception.core.types import Detection, LabelScore, SceneDescription  # noqa: E402
from vlm_perception.ros import conversions, parameters  # noqa: E402
from vlm_perception.ros.diagnostics import PerceptionStats  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
HEADER = Header(stamp=Time(sec=12, nanosec=345), frame_id='cam')


def raw_image(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    """Return a sensor_msgs/Image of pixels (H, W[, C]) with pad bytes after each row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    return Image(header=HEADER, height=height, width=width, encoding=encoding,
                 step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize('encoding, pixels, expected', [
    ('rgb8', RGB, RGB),
    ('bgr8', RGB[:, :, ::-1], RGB),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)]), RGB),
    ('bgra8', np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)]), RGB),
    ('mono8', RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),
])
@pytest.mark.parametrize('pad', [0, 3])
def test_raw_image_encodings(encoding: str, pixels: np.ndarray, expected: np.ndarray,
                             pad: int) -> None:
    rgb = conversions.image_to_rgb(raw_image(encoding, np.ascontiguousarray(pixels), pad))
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize('change', [
    {'encoding': 'yuv422_weird'},
    {'step': 2},                       # shorter than a row
    {'height': 60},                    # data too short for the size
    {'height': 0, 'width': 0, 'step': 0, 'data': b''},
    {'height': 9000, 'width': 9000},   # huge: refused before looking at the data
])
def test_bad_raw_images_are_input_errors(change: dict) -> None:
    image = raw_image('rgb8', RGB)
    for name, value in change.items():
        setattr(image, name, value)
    with pytest.raises(InputError):
        conversions.image_to_rgb(image)


def test_compressed_images() -> None:
    ok, png = cv2.imencode('.png', RGB[:, :, ::-1])
    assert ok
    rgb = conversions.compressed_to_rgb(CompressedImage(format='png', data=png.tobytes()))
    np.testing.assert_array_equal(rgb, RGB)
    for data in (b'', b'definitely not an image'):
        with pytest.raises(InputError):
            conversions.compressed_to_rgb(CompressedImage(format='jpeg', data=data))


def test_rgb_to_image_round_trip_keeps_the_header() -> None:
    image = conversions.rgb_to_image(RGB, HEADER)
    assert image.header == HEADER and image.encoding == 'rgb8' and image.step == 15
    np.testing.assert_array_equal(conversions.image_to_rgb(image), RGB)


def test_scene_round_trip_and_header() -> None:
    scene = SceneDescription(caption='a cup', tags=[LabelScore('kitchen', 0.75)],
                             detections=[Detection('cup', 0.5, 10, 20, 30, 40)],
                             summary='A cup.')
    message = conversions.scene_to_msg(scene, HEADER)
    assert message.header == HEADER
    assert not message.detections[0].has_position
    back = conversions.scene_from_msg(message)
    assert back.to_dict() == scene.to_dict()
    array = conversions.detections_to_msg(scene.detections, HEADER)
    assert array.header == HEADER and array.detections[0].label == 'cup'


def test_answer_messages() -> None:
    from vlm_perception.core.types import Answer

    good = conversions.answer_to_msg('q1', 'what?', HEADER, Answer('what?', 'red', 0.8))
    assert good.success and good.id == 'q1' and good.answer == 'red' and good.header == HEADER
    bad = conversions.answer_to_msg('q2', '', None, error='question is empty')
    assert not bad.success and bad.error == 'question is empty' and bad.id == 'q2'


def test_summary_marker_is_text_in_the_image_frame() -> None:
    (text,) = conversions.summary_marker('One cup.', HEADER).markers
    assert text.text == 'One cup.' and text.type == Marker.TEXT_VIEW_FACING
    assert text.header == HEADER and text.lifetime.sec == 0 and text.lifetime.nanosec == 0


def test_detection_markers_box_the_placed_detections_at_their_size() -> None:
    placed = msg.Detection(label='cup', score=0.9, has_position=True,
                           position=Point(x=0.1, y=0.2, z=1.5), size=Vector3(x=0.1, y=0.2, z=0.0))
    unplaced = msg.Detection(label='dog', score=0.9)
    array = msg.DetectionArray(header=HEADER, detections=[unplaced, placed])
    markers = conversions.detection_markers(array, lifetime=0.75).markers
    assert len(markers) == 2 and all(m.header == HEADER for m in markers)
    box, label = markers
    assert box.type == Marker.CUBE and box.pose.position.z == pytest.approx(1.5)
    assert (box.scale.x, box.scale.y) == pytest.approx((0.1, 0.2))
    assert box.scale.z == conversions.MIN_MARKER_SIZE  # flat objects stay visible
    assert label.type == Marker.TEXT_VIEW_FACING and label.text == 'cup 0.90'
    assert (box.lifetime.sec, box.lifetime.nanosec) == (0, 750_000_000)


def test_in_frame_moves_positions_and_keeps_the_stamp() -> None:
    from vlm_perception.core.depth import RigidTransform

    placed = msg.Detection(label='cup', score=0.9, has_position=True,
                           position=Point(x=0.0, y=0.0, z=2.0), size=Vector3(x=0.1, y=0.1, z=0.1))
    array = msg.DetectionArray(header=HEADER, detections=[placed, msg.Detection(label='dog')])
    # optical frame (z forward) to a body frame (x forward), 1 m above its origin
    optical_to_body = RigidTransform((0.0, 0.0, 1.0), (-0.5, 0.5, -0.5, 0.5))
    moved = conversions.in_frame(array, 'base_link', optical_to_body)
    assert moved.header.frame_id == 'base_link' and moved.header.stamp == HEADER.stamp
    position = moved.detections[0].position
    assert (position.x, position.y, position.z) == pytest.approx((2.0, 0.0, 1.0))
    assert not moved.detections[1].has_position
    assert array.detections[0].position.z == 2.0  # the input is not changed


def test_detection_round_trip_keeps_position_and_size() -> None:
    core = Detection('cup', 0.5, 10.0, 20.0, 4.0, 6.0, (0.1, 0.2, 1.5), (0.1, 0.2, 0.05))
    message = conversions.detection_to_msg(core)
    assert message.has_position and message.size.y == pytest.approx(0.2)
    back = conversions.detection_from_msg(message)
    assert back.position == pytest.approx(core.position) and back.size == pytest.approx(core.size)
    plain = conversions.detection_to_msg(Detection('dog', 0.5, 1.0, 2.0, 3.0, 4.0))
    assert not plain.has_position and conversions.detection_from_msg(plain).position is None


def test_detection_mask_round_trip_is_mono8_with_the_image_header() -> None:
    mask = np.zeros((6, 4), np.uint8)  # the box's pixels: columns 8..11, rows 17..22
    mask[1:4, 2:] = 255
    core = Detection('cup', 0.5, 10.0, 20.0, 3.5, 5.2, mask=mask)
    message = conversions.detection_to_msg(core, HEADER)
    image = message.mask
    assert (image.width, image.height, image.encoding, image.step) == (4, 6, 'mono8', 4)
    assert image.header == HEADER
    back = conversions.detection_from_msg(message)
    np.testing.assert_array_equal(back.mask, mask)
    assert back == core and back.mask is not mask
    array = conversions.detections_to_msg([core], HEADER)
    assert array.detections[0].mask.header == HEADER and array.detections[0].mask.width == 4
    scene = conversions.scene_to_msg(SceneDescription(detections=[core]), HEADER)
    np.testing.assert_array_equal(conversions.scene_from_msg(scene).detections[0].mask, mask)
    moved = conversions.in_frame(array, 'base_link', conversions.IDENTITY)
    assert moved.detections[0].mask == array.detections[0].mask
    message.mask = raw_image('mono8', mask, pad=3)  # padded rows read as well
    np.testing.assert_array_equal(conversions.detection_from_msg(message).mask, mask)
    message.mask.encoding = 'rgb8'
    with pytest.raises(InputError, match='mono8'):
        conversions.detection_from_msg(message)
    plain = conversions.detection_to_msg(Detection('dog', 0.5, 1.0, 2.0, 3.0, 4.0), HEADER)
    assert plain.mask.width == 0 and conversions.detection_from_msg(plain).mask is None


def test_diagnostic_array() -> None:
    stats = PerceptionStats()
    stats.model_state = 'ready'
    stats.record_drop('stale')
    array = conversions.diagnostic_array(stats.report(), Time(sec=5), 'node: perception', 'cpu')
    status = array.status[0]
    assert status.level == DiagnosticStatus.OK and status.hardware_id == 'cpu'
    assert {kv.key: kv.value for kv in status.values}['dropped: stale'] == '1'


def test_detections_2d_where_vision_msgs_is_installed() -> None:
    array = msg.DetectionArray(header=HEADER, detections=[
        msg.Detection(label='cup', score=0.5, center_x=1.0, center_y=2.0, size_x=3.0,
                      size_y=4.0)])
    result = conversions.detections_2d(array)
    if conversions.Detection2DArray is None:
        assert result is None
        pytest.skip('vision_msgs is not installed: detections_2d is not published')
    assert result.detections[0].results[0].hypothesis.class_id == 'cup'
    assert result.detections[0].bbox.size_y == 4.0


def test_parameter_descriptors() -> None:
    from vlm_perception.ros.node import descriptor

    threshold = descriptor(parameters.SPEC_BY_NAME['detection_threshold'])
    assert threshold.floating_point_range[0].to_value == 1.0
    assert threshold.description and not threshold.read_only
    assert descriptor(parameters.SPEC_BY_NAME['device']).read_only
    assert 'best_effort' in descriptor(
        parameters.SPEC_BY_NAME['image_reliability']).additional_constraints
