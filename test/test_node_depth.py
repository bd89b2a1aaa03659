"""
perception_node in 3D: depth and camera_info place detections, and locate finds one object.

The node runs the shipped shapes detector with use_depth; this test publishes rendered shapes
scenes with their registered depth (shapes.drift's 3D world) and compares the node's points
with the scene's ground truth.
"""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

import cv2  # noqa: E402,I100
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_harness import (call, client_of, diagnostics_values, image_publisher,  # noqa: E402
                          probe, set_parameter, shapes_node, spin_until)
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402
from vlm_perception.core.presets import get_preset  # noqa: E402
from vlm_perception.ros.conversions import rgb_to_image  # noqa: E402
from vlm_perception.shapes.drift import DriftingScene, pinhole_k  # noqa: E402

WIDTH, HEIGHT, FOV = 640, 480, 60.0
FRAME_ID = 'camera_optical_frame'
NODE = '/vlm_perception'
UNPAIRED = 'no depth image within depth_slop'


@pytest.fixture(scope='module')
def perception():
    """Start perception_node on the shapes models with depth; stop it and check a clean exit."""
    node = shapes_node('-p', 'use_depth:=true', '-p', 'capabilities:=[detect]',
                       '-p', 'warmup:=false', '-p', 'scene_period:=0.5',
                       '-p', 'image_reliability:=reliable')
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def bare(perception):
    """Return this test's node with image, depth and camera_info publishers matched."""
    with probe(perception, 'node_depth_test') as node:
        node.publishers_ = {topic: image_publisher(node, topic, kind) for topic, kind in
                            (('image', Image), ('depth', Image), ('camera_info', CameraInfo))}
        node.detections = []
        node.create_subscription(msg.DetectionArray, 'detections', node.detections.append, 10)
        node.perception = perception
        matched = spin_until(node, lambda: all(publisher.get_subscription_count() > 0
                                               for publisher in node.publishers_.values()), 30.0)
        assert matched, perception.output()
        yield node


@pytest.fixture(scope='module')
def ros(bare):
    """Return the test node once the perception node placed an object of a first scene."""
    shot = Shot(1)
    name = next(iter(shot.truth))
    for sec in range(50, 60):  # a message sent while discovery settles may be lost
        show(bare, shot, sec)
        if locate(bare, name).success:
            return bare
    raise AssertionError(f'no object placed:\n{bare.perception.output()}')


class Shot:
    """One rendered scene: image, depth in metres and ground truth (a still camera)."""

    def __init__(self, seed: int) -> None:
        scene = DriftingScene(np.random.default_rng(seed), WIDTH, HEIGHT, speed=0.0, fov=FOV)
        self.rgb = scene.step(0.0)
        self.depth = scene.depth_metres()
        self.truth = {truth.label: truth for truth in scene.ground_truth()}
        self.objects = {obj.name: obj for obj in scene.objects}


def header(sec: int, nanosec: int = 0) -> Header:
    """Return a header of the test camera stamped sec.nanosec."""
    result = Header(frame_id=FRAME_ID)
    result.stamp.sec, result.stamp.nanosec = sec, nanosec
    return result


def depth_message(metres: np.ndarray, stamp: Header, encoding: str = '16UC1') -> Image:
    """Return a depth image: 16UC1 millimetres or 32FC1 metres."""
    values = (np.round(metres * 1000).astype(np.uint16) if encoding == '16UC1'
              else metres.astype(np.float32))
    height, width = values.shape
    return Image(header=stamp, height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * values.itemsize, data=values.tobytes())


def camera_info(stamp: Header, k=None) -> CameraInfo:
    """Return the camera_info of the test camera (K of the shapes camera unless given)."""
    return CameraInfo(header=stamp, width=WIDTH, height=HEIGHT, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=list(k or pinhole_k(WIDTH, HEIGHT, FOV)))


def show(node, shot: Shot, sec: int, depth: Image = None, info: CameraInfo = None,
         paired: bool = True, nanosec: int = 0) -> None:
    """
    Publish camera_info, depth and the image stamped sec; wait until the node processed it.

    With paired, also until locate pairs that very image with a depth image: a message can be
    lost while discovery settles, so all three are sent again until then.
    """
    stamp = header(sec, nanosec)
    messages = ((node.publishers_['camera_info'], info or camera_info(stamp)),
                (node.publishers_['depth'], depth or depth_message(shot.depth, stamp)),
                (node.publishers_['image'], rgb_to_image(shot.rgb, stamp)))

    def processed() -> bool:
        return any(d.header.stamp == stamp.stamp for d in node.detections)

    answers = []  # the last locate answers, for the failure message

    def paired_here() -> bool:  # locate uses this very image, with a depth image
        for name in shot.truth:
            response = locate(node, name)
            answers[:] = [f'{name}: {response.message} (stamp {response.point.header.stamp.sec})']
            if response.success:
                return response.point.header.stamp == stamp.stamp
            if 'under the best match' in response.message:
                return True
        return False

    deadline = time.monotonic() + 60.0  # generous: a loaded CI machine can stall for seconds
    while time.monotonic() < deadline:
        for publisher, message in messages:
            publisher.publish(message)
        if spin_until(node, processed, timeout=3.0) and (not paired or paired_here()):
            return
    seen = sorted({d.header.stamp.sec for d in node.detections})[-5:]
    raise AssertionError(f'image {sec} not processed (detections seen for {seen}; locate: '
                         f'{answers}):\n{node.perception.output()}')


def locate(node, query: str, max_age: float = 0.0) -> srv.Locate.Response:
    """Call the locate service."""
    return call(node, client_of(node, srv.Locate, 'locate'),
                srv.Locate.Request(query=query, max_age=max_age))


def relative_error(response: srv.Locate.Response, truth) -> float:
    """Distance of the located point from the truth, as a fraction of the true range (z)."""
    point = response.point.point
    return float(np.linalg.norm(np.subtract((point.x, point.y, point.z), truth.position))
                 / truth.position[2])


def diagnostics(node, done) -> dict:
    """Wait for a perception status for which done(status) holds; return its values."""
    seen = []
    subscription = node.create_subscription(DiagnosticArray, '/diagnostics', seen.append, 10)

    def matched():
        return [status for array in seen for status in array.status
                if status.name.endswith('perception') and done(status)]

    try:
        assert spin_until(node, matched, timeout=15.0), [s.message for a in seen for s in a.status]
        status = matched()[-1]
        return {'message': status.message, **diagnostics_values(DiagnosticArray(status=[status]))}
    finally:
        node.destroy_subscription(subscription)


def test_before_any_image_locate_says_no_image_and_diagnostics_miss_depth(bare) -> None:
    response = locate(bare, 'red circle')
    assert not response.success and response.message.startswith('no image'), response.message
    assert diagnostics(bare, lambda status: status.message.startswith('no depth for'))


def test_located_points_and_sizes_match_the_ground_truth(ros) -> None:
    errors, size_errors, missed = [], [], []
    for seed in range(1, 17):
        shot = Shot(seed)
        show(ros, shot, sec=100 + seed)
        for name, truth in shot.truth.items():
            response = locate(ros, name)
            if response.message.startswith('no match'):  # the detector's recall is 0.97
                missed.append(name)
                continue
            assert response.success, response.message
            assert response.point.header.frame_id == FRAME_ID
            assert response.point.header.stamp.sec == 100 + seed
            assert response.detection.label == name and response.detection.has_position
            assert response.matches[0] == response.detection
            errors.append(relative_error(response, truth))
            size = response.detection.size
            size_errors += [abs(size.x / truth.size[0] - 1), abs(size.y / truth.size[1] - 1)]
            assert size.z == pytest.approx(0.0, abs=0.01), name  # flat cut-outs
    print(f'range error: median {np.median(errors):.4f}, max {max(errors):.4f}; size error: '
          f'median {np.median(size_errors):.4f}, max {max(size_errors):.4f} '
          f'({len(errors)} objects, {len(missed)} not detected)')
    assert len(missed) <= 0.1 * (len(errors) + len(missed)), missed
    assert np.median(errors) <= 0.02, errors
    assert np.median(size_errors) <= 0.05, size_errors


def test_streamed_detections_carry_positions(ros) -> None:
    shot = Shot(2)
    for sec in range(150, 160):  # depth first, so the frame pairs once it is processed
        stamp = header(sec)
        ros.publishers_['depth'].publish(depth_message(shot.depth, stamp))
        spin_until(ros, lambda: False, timeout=0.3)
        ros.publishers_['image'].publish(rgb_to_image(shot.rgb, stamp))

        def placed() -> list:
            return [d for array in ros.detections if array.header.stamp.sec == sec
                    for d in array.detections if d.has_position]

        if spin_until(ros, placed, timeout=3.0):
            break
    assert placed(), ros.perception.output()
    for detection in placed():
        truth = shot.truth.get(detection.label)
        if truth is not None and abs(detection.center_x - truth.center_x) < 10:
            assert detection.position.z == pytest.approx(truth.position[2], rel=0.02)
            return
    raise AssertionError(f'no streamed detection of a true object: {placed()}')


def test_an_object_with_40_percent_zero_depth_is_still_located(ros) -> None:
    shot = Shot(2)
    name, obj = next(iter(shot.objects.items()))
    x0, y0, x1, y1 = obj.box
    holes = np.random.default_rng(0).random((y1 - y0, x1 - x0)) < 0.4
    shot.depth[y0:y1, x0:x1][holes] = 0.0
    show(ros, shot, sec=200)
    response = locate(ros, name)
    assert response.success, response.message
    assert relative_error(response, shot.truth[name]) <= 0.02


@pytest.mark.parametrize('invalid', [0.0, 50.0, 0.05], ids=['zero', 'beyond max', 'below min'])
def test_invalid_depth_under_an_object_gives_no_position(ros, invalid: float) -> None:
    shot = Shot(3)
    name, obj = next(iter(shot.objects.items()))
    x0, y0, x1, y1 = obj.box
    shot.depth[y0:y1, x0:x1] = invalid
    show(ros, shot, sec=300)
    response = locate(ros, name)
    assert not response.success and response.message.startswith('no depth'), response.message
    assert 'under the best match' in response.message
    assert response.detection.label == name and not response.detection.has_position
    streamed = next(d for d in ros.detections if d.header.stamp.sec == 300)
    assert not any(d.has_position for d in streamed.detections if d.label == name)


def test_nan_in_32fc1_depth_gives_no_position(ros) -> None:
    shot = Shot(3)
    name, obj = next(iter(shot.objects.items()))
    x0, y0, x1, y1 = obj.box
    shot.depth[y0:y1, x0:x1] = np.nan
    show(ros, shot, sec=310, depth=depth_message(shot.depth, header(310), '32FC1'))
    response = locate(ros, name)
    assert not response.success and 'under the best match' in response.message, response.message


def test_locate_falls_back_to_the_newest_frame_with_depth(ros) -> None:
    with_depth, without = Shot(7), Shot(8)
    show(ros, with_depth, sec=450)
    name = next(name for name in with_depth.truth if locate(ros, name).success)
    late = header(450, 600_000_000)  # never pairs with the image stamped 450.3
    show(ros, without, sec=450, nanosec=300_000_000, depth=depth_message(without.depth, late),
         paired=False)
    response = locate(ros, name)
    assert response.success, response.message
    stamp = response.point.header.stamp  # the newest frame that has a depth image
    assert (stamp.sec, stamp.nanosec) == (450, 0)
    assert relative_error(response, with_depth.truth[name]) <= 0.02


def test_depth_outside_the_slop_is_not_paired_and_is_counted(ros) -> None:
    shot = Shot(4)
    late = header(400, 200_000_000)  # 0.2 s after the image; depth_slop is 0.05
    show(ros, shot, sec=400, depth=depth_message(shot.depth, late), paired=False)
    response = locate(ros, next(iter(shot.truth)))
    assert not response.success and response.message.startswith('no depth'), response.message
    assert UNPAIRED in response.message and response.detection.label
    values = diagnostics(ros, lambda status: True)
    assert int(values.get('dropped: depth unpaired', 0)) >= 1, values


@pytest.mark.parametrize('encoding, scale', [('32FC1', 1), ('16UC1', 2), ('32FC1', 2)])
def test_32fc1_and_depth_of_another_resolution(ros, encoding: str, scale: int) -> None:
    shot = Shot(5)
    metres = cv2.resize(shot.depth, (WIDTH // scale, HEIGHT // scale),
                        interpolation=cv2.INTER_NEAREST)
    sec = 500 + scale * 10 + (encoding == '32FC1')
    show(ros, shot, sec=sec, depth=depth_message(metres, header(sec), encoding))
    for name, truth in shot.truth.items():
        response = locate(ros, name)
        assert response.success, response.message
        assert relative_error(response, truth) <= 0.02, name


def test_a_depth_image_of_another_encoding_is_rejected_and_counted(ros) -> None:
    shot = Shot(6)
    colour = rgb_to_image(shot.rgb, header(590))
    show(ros, shot, sec=590, depth=colour, paired=False)
    values = diagnostics(ros, lambda status: 'rejected: depth' in
                         {kv.key for kv in status.values})
    assert int(values['rejected: depth']) >= 1
    assert "depth encoding 'rgb8' is not supported" in ros.perception.output()


def test_bad_camera_info_is_rejected_and_the_next_valid_one_used(ros) -> None:
    shot = Shot(6)
    zeros = camera_info(header(600), k=[0.0] * 9)
    show(ros, shot, sec=600, info=zeros)
    values = diagnostics(ros, lambda status: 'rejected: camera_info' in
                         {kv.key for kv in status.values})
    assert int(values['rejected: camera_info']) >= 1
    assert 'rejected camera_info' in ros.perception.output()
    name, truth = next((n, t) for n, t in shot.truth.items() if abs(t.position[0]) > 0.05)
    assert relative_error(locate(ros, name), truth) <= 0.02  # the earlier valid K still holds
    fx, _, cx, _, fy, cy = pinhole_k(WIDTH, HEIGHT, FOV)[:6]
    doubled = (2 * fx, 0.0, cx, 0.0, 2 * fy, cy, 0.0, 0.0, 1.0)  # a longer lens
    show(ros, shot, sec=601, info=camera_info(header(601), k=doubled))
    point = locate(ros, name).point.point
    assert point.x == pytest.approx(truth.position[0] / 2, rel=0.05)
    assert point.z == pytest.approx(truth.position[2], rel=0.02)
    show(ros, shot, sec=602)  # the shapes camera's K again


def test_markers_box_each_placed_object_and_the_summary_says_where(ros) -> None:
    markers, summaries = [], []
    ros.create_subscription(MarkerArray, 'markers', markers.append, 10)
    ros.create_subscription(String, 'scene_text', lambda m: summaries.append(m.data), 10)
    shot = Shot(1)
    sec = 700
    boxes = []

    def boxed() -> bool:
        boxes[:] = [m for array in markers for m in array.markers
                    if m.type == Marker.CUBE and m.header.stamp.sec >= 700]
        return bool(boxes) and any(' m ahead' in text for text in summaries)

    for sec in range(700, 720):
        show(ros, shot, sec=sec)
        if spin_until(ros, boxed, timeout=1.0):
            break
    assert boxed(), (summaries, len(markers))
    box = boxes[-1]
    assert box.header.frame_id == FRAME_ID and box.ns == 'detections'
    assert box.lifetime.sec + box.lifetime.nanosec / 1e9 >= 0.5
    truth = min(shot.truth.values(),
                key=lambda t: np.linalg.norm(np.subtract(
                    (box.pose.position.x, box.pose.position.y, box.pose.position.z),
                    t.position)))
    assert box.scale.x == pytest.approx(truth.size[0], rel=0.05)


def test_query_fills_positions_and_the_summary_says_distances(ros) -> None:
    shot = Shot(1)
    show(ros, shot, sec=800)
    name = next(iter(shot.truth))
    response = call(ros, ros.create_client(srv.QueryScene, 'query'),
                    srv.QueryScene.Request(labels=[name]))
    assert response.success, response.message
    assert response.scene.detections[0].has_position
    assert f'a {name} {shot.truth[name].position[2]:.1f} m ahead' in response.scene.summary


def test_locate_failures_say_why(ros) -> None:
    shot = Shot(1)
    show(ros, shot, sec=900)
    absent = next(name for name in get_preset('shapes').labels if name not in shot.truth)
    response = locate(ros, absent)
    assert not response.success and response.message.startswith('no match'), response.message
    assert not response.matches
    response = locate(ros, next(iter(shot.truth)), max_age=1.0)  # stamped 900 s after 1970
    assert not response.success and response.message.startswith('stale'), response.message
    response = locate(ros, '   ')
    assert not response.success and 'query is empty' in response.message


def test_depth_parameters_are_validated(ros) -> None:
    result = set_parameter(ros, 'min_depth', 20.0)
    assert not result.successful and 'below max_depth' in result.reason
    assert set_parameter(ros, 'max_depth', 12.0).successful
    assert not set_parameter(ros, 'depth_slop', -1.0).successful
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        result = set_parameter(ros, 'target_frame', 'base_link')
        assert not result.successful and 'tf2_ros' in result.reason


def test_target_frame_moves_points_through_a_static_transform(ros) -> None:
    tf2_ros = pytest.importorskip('tf2_ros', reason='tf2_ros is not installed here (the PyPI '
                                  'ROS wheels have no tf2): target_frame is refused instead')
    from geometry_msgs.msg import TransformStamped

    from vlm_perception.core.depth import RigidTransform

    mount = TransformStamped(header=Header(frame_id='base_link'), child_frame_id=FRAME_ID)
    mount.transform.translation.x, mount.transform.translation.z = 0.1, 0.5
    rotation = mount.transform.rotation  # optical (z forward) to body (x forward)
    rotation.x, rotation.y, rotation.z, rotation.w = -0.5, 0.5, -0.5, 0.5
    broadcaster = tf2_ros.StaticTransformBroadcaster(ros)
    broadcaster.sendTransform(mount)
    markers = []
    ros.create_subscription(MarkerArray, 'markers', markers.append, 10)
    assert set_parameter(ros, 'target_frame', 'base_link').successful
    try:
        shot = Shot(1)
        name = next(iter(shot.truth))
        for sec in range(1000, 1010):  # until the static transform has reached the node
            show(ros, shot, sec=sec)
            response = locate(ros, name)
            if response.success:
                break
        assert response.success, response.message
        assert response.point.header.frame_id == 'base_link'
        camera = response.detection.position  # the detection stays in the camera frame
        expected = RigidTransform((0.1, 0.0, 0.5), (-0.5, 0.5, -0.5, 0.5)).apply(
            (camera.x, camera.y, camera.z))
        point = response.point.point
        assert (point.x, point.y, point.z) == pytest.approx(expected, abs=1e-6)
        assert point.x == pytest.approx(shot.truth[name].position[2] + 0.1, rel=0.02)
        assert spin_until(ros, lambda: any(m.header.frame_id == 'base_link' and
                                           m.type == Marker.CUBE
                                           for array in markers for m in array.markers), 10.0)
        assert set_parameter(ros, 'target_frame', 'nowhere').successful
        response = locate(ros, name)
        assert not response.success and response.message.startswith('transform'), \
            response.message
        values = diagnostics(ros, lambda status: 'errors: tf' in
                             {kv.key for kv in status.values})
        assert int(values['errors: tf']) >= 1
    finally:
        set_parameter(ros, 'target_frame', '')


def test_publishers_the_node_cannot_hear_are_named_once_each(bare) -> None:
    """A best-effort camera (the node is reliable here) and a wrong type: one warning each."""
    from rclpy.context import Context
    from rclpy.qos import qos_profile_sensor_data

    # A participant of its own: this one already has camera_info with another type.
    context = Context()
    rclpy.init(context=context)
    peer = rclpy.create_node('unheard_camera', context=context)
    peer.create_publisher(Image, 'depth', qos_profile_sensor_data)
    peer.create_publisher(String, 'camera_info', 1)
    expected = ('/unheard_camera on /depth offers QoS incompatible with the subscription '
                '(Best effort publisher and reliable subscription): none of its messages reach '
                'this node (image_reliability:=best_effort hears both)',
                '/unheard_camera on /camera_info publishes std_msgs/msg/String, not '
                'sensor_msgs/msg/CameraInfo: none of its messages reach this node')
    try:
        assert spin_until(bare, lambda: all(text in bare.perception.output()
                                            for text in expected), 10.0), \
            bare.perception.output()
        spin_until(bare, lambda: False, 2.5)  # two more checks of the graph
        output = bare.perception.output()
        assert [output.count(text) for text in expected] == [1, 1], output
    finally:
        peer.destroy_node()
        rclpy.shutdown(context=context)
