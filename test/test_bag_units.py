"""Bag runs' plain parts: topic choice, depth pairing, the message factory (no models)."""

import numpy as np
import pytest

from vlm_perception.bag.pairing import DepthPairing, HeldImage, HOLD_S
from vlm_perception.bag.settings import BagSettings, NODE
from vlm_perception.bag.topics import resolve
from vlm_perception.bag.typestore import load_types, store_name
from vlm_perception.core import message_layout as layout
from vlm_perception.core.depth import DepthImage
from vlm_perception.core.errors import InputError
from vlm_perception.core.types import Detection
from vlm_perception.ros.parameters import SPEC_BY_NAME

IMAGE, COMPRESSED = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'
INFO = 'sensor_msgs/msg/CameraInfo'
MS = 1_000_000


def test_the_only_image_topic_and_its_siblings_are_found() -> None:
    topics = resolve({'/cam/image': IMAGE, '/cam/image/compressed': COMPRESSED,
                      '/cam/depth': IMAGE, '/cam/camera_info': INFO,
                      '/tf': 'tf2_msgs/msg/TFMessage'}, 'bag')
    assert (topics.image, topics.compressed, topics.depth, topics.camera_info) == \
        ('/cam/image', False, '/cam/depth', '/cam/camera_info')
    assert topics.output('detections') == '/cam/detections'
    root = resolve({'/image': IMAGE}, 'bag', out_namespace='/')
    assert (root.depth, root.camera_info, root.output('scene')) == ('', '', '/scene')


def test_a_compressed_topic_is_read_for_its_image_topic() -> None:
    topics = resolve({'/cam/image/compressed': COMPRESSED, '/cam/depth': IMAGE}, 'bag',
                     image_topic='cam/image', depth_topic='', out_namespace='/robot/seen/')
    assert (topics.image, topics.compressed, topics.depth) == \
        ('/cam/image/compressed', True, '')
    assert topics.output('scene_text') == '/robot/seen/scene_text'


@pytest.mark.parametrize('recorded, chosen, message', [
    ({'/a/image': IMAGE, '/b/image': COMPRESSED}, {}, 'several image topics'),
    ({'/points': 'sensor_msgs/msg/PointCloud2'}, {}, 'no image topic in bag'),
    ({'/a/image': IMAGE}, {'image_topic': '/b/image'}, r'its image topics: /a/image \(Image\)'),
    ({'/a/image': IMAGE}, {'depth_topic': '/a/depth'}, 'it is not recorded'),
])
def test_a_topic_that_is_not_there_is_a_clear_error(recorded: dict, chosen: dict,
                                                    message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve(recorded, 'bag', **chosen)


def test_depth_topics_are_not_taken_for_the_image() -> None:
    topics = resolve({'/cam/color/image_raw': IMAGE, '/cam/depth/image_raw': IMAGE}, 'bag')
    assert topics.image == '/cam/color/image_raw' and topics.depth == ''


def _image(log_ms: int, stamp_ms: int) -> HeldImage:
    return HeldImage(log_ms * MS, stamp_ms * MS, None, None)


def test_an_image_waits_for_its_depth_image_logged_after_it() -> None:
    pairing = DepthPairing(True, 0.01)
    depth = DepthImage(np.ones((2, 2), np.uint16), 0.001)
    first = _image(100, 90)
    assert pairing.add_image(first) == [] and pairing.oldest_held_ns == 100 * MS
    assert pairing.advance(101 * MS) == []
    assert pairing.add_depth(90 * MS, depth, 102 * MS) == [first]
    assert pairing.depth_for(first) is depth and pairing.oldest_held_ns is None


def test_an_image_whose_depth_was_lost_goes_on_after_the_hold() -> None:
    pairing = DepthPairing(True, 0.01)
    lost = _image(100, 90)
    pairing.add_image(lost)
    hold_ms = int(HOLD_S * 1000)
    assert pairing.advance((100 + hold_ms - 1) * MS) == []
    assert pairing.advance((100 + hold_ms) * MS) == [lost]
    assert pairing.depth_for(lost) is None
    later = _image(2000, 1990)
    assert pairing.add_image(later) == [] and pairing.drain() == [later]


def test_without_depth_images_pass_straight_on() -> None:
    pairing = DepthPairing(False, 0.05)
    image = _image(1, 1)
    assert pairing.add_image(image) == [image] and pairing.depth_for(image) is None


def test_settings_default_to_the_nodes_parameters() -> None:
    settings = BagSettings()
    for name, value in NODE.items():
        assert getattr(settings, name) == value == SPEC_BY_NAME[name].default
    with pytest.raises(InputError, match='min_depth'):
        BagSettings(min_depth=5.0, max_depth=1.0).checked()


def test_the_store_is_kilted_unless_ros_distro_names_another() -> None:
    assert store_name('') == 'ROS2_KILTED'
    assert store_name('humble') == 'ROS2_HUMBLE'
    assert store_name('rolling-of-the-future') == 'ROS2_KILTED'


def test_messages_made_fill_the_fields_not_given() -> None:
    types = load_types()
    header = layout.header(types.make, 1_500_000_000_250_000_000, 'cam')
    plain = layout.detection(types.make, Detection('cup', 0.5, 10.0, 20.0, 4.0, 6.0), header)
    assert (plain.has_position, plain.position.z, plain.mask.width, plain.mask.data.size) == \
        (False, 0.0, 0, 0)
    info = types.make('sensor_msgs/msg/CameraInfo')
    assert info.k.shape == (9,) and info.roi.width == 0 and info.d.size == 0
    back = types.deserialize(types.serialize(plain), 'vlm_perception/msg/Detection')
    assert (back.label, back.score, back.mask.header.stamp.nanosec) == ('cup', 0.5, 250_000_000)
    with pytest.raises(InputError, match='could not be read'):
        types.deserialize(b'\x00\x01', 'vlm_perception/msg/DetectionArray')
