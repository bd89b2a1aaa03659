"""shapes_camera in its own process: image, depth, camera_info and ground truth; clean Ctrl-C."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import ros_node, spin_until  # noqa: E402,I100
from rclpy.impl.implementation_singleton import rclpy_implementation  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from vlm_perception import msg  # noqa: E402
from vlm_perception.ros.camera import ShapesCamera  # noqa: E402
from vlm_perception.ros.conversions import detections_to_msg  # noqa: E402
from vlm_perception.shapes.drift import DriftingScene, pinhole_k, scene_rng  # noqa: E402

TOPICS = {'image': Image, 'depth': Image, 'camera_info': CameraInfo,
          'ground_truth': msg.DetectionArray}


def stamp(message) -> tuple[int, int]:
    """Return the message's header stamp as (sec, nanosec)."""
    return message.header.stamp.sec, message.header.stamp.nanosec


def test_camera_publishes_registered_depth_and_ground_truth_with_one_header() -> None:
    camera = ros_node('vlm_perception.ros.camera', ['-p', 'rate:=5.0'])
    rclpy.init()
    try:
        node = rclpy.create_node('camera_test')
        received = {topic: {} for topic in TOPICS}
        for topic, message_type in TOPICS.items():
            node.create_subscription(
                message_type, topic,
                lambda message, topic=topic: received[topic].setdefault(stamp(message), message),
                QoSProfile(depth=10))

        def common() -> set:
            return set.intersection(*(set(messages) for messages in received.values()))

        assert spin_until(node, common, timeout=60.0), camera.output()
        frame = {topic: received[topic][min(common())] for topic in TOPICS}
        node.destroy_node()
    finally:
        rclpy.shutdown()
    camera.stop_cleanly()

    image, depth, info = frame['image'], frame['depth'], frame['camera_info']
    truth = frame['ground_truth']
    assert {m.header.frame_id for m in frame.values()} == {'camera_optical_frame'}
    assert (depth.encoding, depth.width, depth.height) == ('16UC1', image.width, image.height)
    assert depth.step == 2 * depth.width and not depth.is_bigendian
    assert (info.width, info.height) == (image.width, image.height) == (640, 480)
    k = pinhole_k(640, 480, 60.0)
    assert list(info.k) == pytest.approx(k)
    millimetres = np.frombuffer(bytes(depth.data), '<u2').reshape(depth.height, depth.width)
    expected = DriftingScene(np.random.default_rng(0)).objects  # the camera's seed 0
    assert sorted(d.label for d in truth.detections) == sorted(o.name for o in expected)
    assert millimetres.max() == 5000  # the wall
    fx, _, cx, _, fy, cy = k[:6]
    for detection in truth.detections:
        assert detection.has_position and detection.score == 1.0
        assert detection.size_x == detection.size_y and detection.size.z == 0.0
        z = millimetres[int(detection.center_y), int(detection.center_x)] / 1000
        position = detection.position
        assert position.z == pytest.approx(z, abs=6e-4), detection
        # the box centre (continuous pixels) back-projected at the depth seen there
        assert position.x == pytest.approx((detection.center_x - 0.5 - cx) * z / fx, abs=1e-3)
        assert position.y == pytest.approx((detection.center_y - 0.5 - cy) * z / fy, abs=1e-3)
        assert detection.size.x == pytest.approx(detection.size_x * z / fx, abs=1e-3)


def scene_key(detections) -> tuple:
    """Return what tells one scene from another: its labels and distances (fixed per scene)."""
    return tuple(sorted((d.label, round(d.position.z, 2)) for d in detections))


def test_scene_seconds_shows_the_seeds_next_scene_and_logs_it() -> None:
    seed, every, width, height = 3, 2.0, 320, 240
    expected = [DriftingScene(scene_rng(seed, n), width, height) for n in range(3)]
    keys = [scene_key(detections_to_msg(scene.ground_truth(), Header()).detections)
            for scene in expected]
    assert len(set(keys)) == 3  # the seed's scenes differ
    camera = ros_node('vlm_perception.ros.camera', [
        '-p', 'rate:=10.0', '-p', f'seed:={seed}', '-p', f'scene_seconds:={every}',
        '-p', f'width:={width}', '-p', f'height:={height}'])
    rclpy.init()
    try:
        node = rclpy.create_node('camera_scenes_test')
        first_seen: dict[tuple, float] = {}  # scene key -> stamp of its first frame seen

        def on_truth(message) -> None:
            sec, nanosec = stamp(message)
            first_seen.setdefault(scene_key(message.detections), sec + nanosec * 1e-9)

        node.create_subscription(msg.DetectionArray, 'ground_truth', on_truth,
                                 QoSProfile(depth=10))
        assert spin_until(node, lambda: keys[2] in first_seen, timeout=60.0), \
            (first_seen, camera.output())
        node.destroy_node()
    finally:
        rclpy.shutdown()
    camera.stop_cleanly()
    # The seed's scenes, in order, each for about scene_seconds (frames lost to discovery aside).
    seen = list(first_seen)  # in the order first seen; scene 0 alone may be missed
    assert len(seen) >= 2 and seen == keys[len(keys) - len(seen):], (seen, keys)
    lasted = first_seen[keys[2]] - first_seen[keys[1]]
    assert 0.25 * every < lasted < 3.0 * every, lasted  # about every s: a loaded machine
    output = camera.output()
    assert 'a new scene every 2 s' in output
    for n in (1, 2):
        line = next(line for line in output.splitlines() if f'scene {n} of seed {seed}: ' in line)
        assert expected[n].caption in line
        assert all(obj.name in line for obj in expected[n].objects)


def test_ctrl_c_to_the_process_group_exits_cleanly_every_time() -> None:
    for _ in range(3):
        camera = ros_node('vlm_perception.ros.camera', ['-p', 'rate:=60.0'], new_session=True)
        assert camera.wait_for_output('publishing '), camera.output()
        time.sleep(0.5)  # Ctrl-C among running frames, where it used to hit a publish
        status, output = camera.stop_group()
        assert status == 0, output
        assert 'Traceback' not in output, output


class FailingPublisher:
    """A publisher failing as rclpy does on a dead context, after shutting it down if given."""

    def __init__(self, context=None) -> None:
        self.context = context

    def publish(self, message) -> None:
        """Shut the context down (what Ctrl-C can do meanwhile), then fail."""
        if self.context is not None:
            self.context.shutdown()
        raise rclpy_implementation.RCLError("Failed to publish: publisher's context is invalid")


def test_a_frame_on_a_context_shut_down_meanwhile_is_dropped_quietly() -> None:
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        camera = ShapesCamera(context=context)
        camera._image_pub = FailingPublisher()  # the context is still up: a real error
        with pytest.raises(rclpy_implementation.RCLError):
            camera._publish()
        camera._image_pub = FailingPublisher(context)
        camera._publish()  # returns quietly
        assert not context.ok()
        camera._publish()  # and does nothing once the context is down
    finally:
        rclpy.try_shutdown(context=context)
