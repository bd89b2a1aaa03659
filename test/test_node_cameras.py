"""
Several cameras in one perception_node (cameras: [left, right]) on the tiny models.

Each camera has its own topics under its name and none at the root; requests and questions
name their camera; diagnostics have a status per camera.
"""

import json
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from node_harness import (call, cli, client_of, frame, image_publisher,  # noqa: E402
                          probe, ros_node, spin_until)
from sensor_msgs.msg import Image  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402

NODE = 'vlm_perception'
SIZES = {'left': (96, 64), 'right': (64, 48)}  # width, height: a batch of two sizes
DEADLINE_S = 30.0


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start perception_node with two cameras (depth on, for its topics); check a clean exit."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'cameras:=[left, right]', '-p', 'warmup:=false',
        '-p', 'capabilities:=[detect]', '-p', 'use_depth:=true'])
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node with an image publisher per camera, matched to the node."""
    with probe(perception, 'node_cameras_test') as node:
        node.cameras = {name: image_publisher(node, f'{name}/image') for name in SIZES}
        assert spin_until(node, lambda: all(publisher.get_subscription_count() > 0
                                            for publisher in node.cameras.values()),
                          timeout=DEADLINE_S), perception.output()
        yield node


def image(camera: str, sec: int) -> Image:
    """Return a frame of camera stamped sec, its frame_id <camera>_cam."""
    width, height = SIZES[camera]
    return frame(sec, frame_id=f'{camera}_cam', width=width, height=height)


def collect(node, topic: str, message_type: Any = msg.DetectionArray) -> list:
    """Subscribe topic; return the list its messages are appended to."""
    received: list = []
    node.create_subscription(message_type, topic, received.append, 10)
    return received


def publish_until(node, cameras: list[str], done: Callable[[], bool], first_sec: int) -> set:
    """Publish a frame per camera (stamps first_sec, +1, ...) until done(); return the stamps."""
    sec, stamps = first_sec, set()
    while not done():
        assert sec < first_sec + 150, 'condition not met while publishing frames'
        for camera in cameras:
            node.cameras[camera].publish(image(camera, sec))
        stamps.add(sec)
        spin_until(node, done, timeout=0.2)
        sec += 1
    return stamps


def query(node, **fields) -> srv.QueryScene.Response:
    """Call the query service (one client)."""
    return call(node, client_of(node, srv.QueryScene, 'query'), srv.QueryScene.Request(**fields))


def test_each_camera_has_its_topics_and_the_root_none(ros) -> None:
    def graph(kind: str) -> dict:
        if NODE not in ros.get_node_names():  # else the queries below raise
            return {}
        names = getattr(ros, f'get_{kind}_names_and_types_by_node')(NODE, '/')
        return {name: types[0] for name, types in names}

    per_camera = {'detections': 'vlm_perception/msg/DetectionArray',
                  'scene': 'vlm_perception/msg/SceneDescription',
                  'scene_text': 'std_msgs/msg/String', 'image_annotated': 'sensor_msgs/msg/Image',
                  'markers': 'visualization_msgs/msg/MarkerArray'}
    inputs = {'image': 'sensor_msgs/msg/Image', 'depth': 'sensor_msgs/msg/Image',
              'camera_info': 'sensor_msgs/msg/CameraInfo'}
    publishers = {f'/{camera}/{topic}': kind for camera in SIZES
                  for topic, kind in per_camera.items()}
    subscriptions = {f'/{camera}/{topic}': kind for camera in SIZES
                     for topic, kind in inputs.items()}
    assert spin_until(ros, lambda: publishers.items() <= graph('publisher').items()
                      and subscriptions.items() <= graph('subscriber').items(),
                      timeout=DEADLINE_S), (graph('publisher'), graph('subscriber'))
    root = {f'/{topic}' for topic in (*per_camera, *inputs, 'detections_2d', 'detections_3d')}
    assert not root & (graph('publisher').keys() | graph('subscriber').keys())
    assert '/answers' in graph('publisher') and '/questions' in graph('subscriber')


def test_frames_of_one_camera_give_detections_on_its_topic_only(ros) -> None:
    left, right, root = (collect(ros, topic) for topic in
                         ('left/detections', 'right/detections', 'detections'))
    stamps = publish_until(ros, ['left'], lambda: len(left) >= 2, first_sec=10)
    spin_until(ros, lambda: False, timeout=1.0)  # anything misrouted arrives meanwhile
    assert all(array.header.frame_id == 'left_cam' and array.header.stamp.sec in stamps
               and array.header.stamp.nanosec == 42 for array in left)
    assert not [array for array in right if array.header.frame_id == 'left_cam']
    assert not root


def test_both_cameras_get_detections_each_with_its_own_header(ros) -> None:
    detections = {camera: collect(ros, f'{camera}/detections') for camera in SIZES}

    def both() -> bool:
        return all(len(arrays) >= 3 for arrays in detections.values())

    stamps = publish_until(ros, list(SIZES), both, first_sec=200)
    for camera, arrays in detections.items():
        mine = [array for array in arrays if array.header.stamp.sec in stamps]
        assert mine and all(array.header.frame_id == f'{camera}_cam' for array in mine), camera
        assert all(array.detections for array in mine)  # threshold 0: something in each


def test_queries_and_locate_are_about_the_camera_they_name(ros) -> None:
    def latest(camera: str, first_sec: int) -> Callable[[], bool]:
        def done() -> bool:
            response = query(ros, camera=camera)
            return response.success and response.scene.header.stamp.sec >= first_sec
        return done

    publish_until(ros, ['right'], latest('right', 400), first_sec=400)
    publish_until(ros, ['left'], latest('left', 500), first_sec=500)
    right = query(ros, camera='right')
    assert right.success, right.message
    assert right.scene.header.frame_id == 'right_cam' and 400 <= right.scene.header.stamp.sec
    for name in ('left', ''):  # empty = the first camera
        response = query(ros, camera=name)
        assert response.success and response.scene.header.frame_id == 'left_cam', name
    locate = call(ros, client_of(ros, srv.Locate, 'locate'),
                  srv.Locate.Request(query='cup', camera='right'))
    # a frame was found (no depth was published, so no point)
    assert not locate.success and locate.message.startswith('no depth'), locate.message


def test_an_unknown_camera_fails_naming_the_cameras(ros) -> None:
    response = query(ros, camera='middle')
    assert not response.success
    assert "'middle'" in response.message and 'left, right' in response.message
    located = call(ros, client_of(ros, srv.Locate, 'locate'),
                   srv.Locate.Request(query='cup', camera='middle'))
    assert not located.success and 'left, right' in located.message


def test_questions_name_their_camera_and_answers_echo_it(ros) -> None:
    answers = collect(ros, 'answers', msg.Answer)
    questions = ros.create_publisher(msg.Question, 'questions', 10)
    assert spin_until(ros, lambda: questions.get_subscription_count() > 0, timeout=DEADLINE_S)
    publish_until(ros, list(SIZES), lambda: query(ros, camera='right').success
                  and query(ros, camera='left').success, first_sec=600)
    asked = {'q-right': 'right', 'q-first': '', 'q-middle': 'middle'}
    for question_id, camera in asked.items():
        questions.publish(msg.Question(id=question_id, question='is there a cup?',
                                       camera=camera))
    assert spin_until(ros, lambda: {a.id for a in answers} >= asked.keys(), timeout=60.0)
    by_id = {answer.id: answer for answer in answers}
    assert by_id['q-right'].success, by_id['q-right'].error
    assert by_id['q-right'].camera == 'right'
    assert by_id['q-right'].header.frame_id == 'right_cam'
    assert by_id['q-first'].success and by_id['q-first'].camera == 'left'
    assert by_id['q-first'].header.frame_id == 'left_cam'
    assert not by_id['q-middle'].success and 'left, right' in by_id['q-middle'].error


def test_diagnostics_have_a_status_per_camera(ros) -> None:
    seen: list = []
    ros.create_subscription(DiagnosticArray, '/diagnostics', seen.append, 10)
    statuses = {f'/{NODE}: camera left', f'/{NODE}: camera right', f'/{NODE}: perception'}

    def values(name: str) -> dict:
        found = [status for array in seen[-1:] for status in array.status if status.name == name]
        return {kv.key: kv.value for kv in found[0].values} if found else {}

    assert spin_until(ros, lambda: seen and statuses <= {s.name for s in seen[-1].status},
                      timeout=DEADLINE_S)
    # an image whose data does not fit its size, on right only: rejected there
    broken = image('right', 900)
    broken.data = bytes(broken.data)[:-1]
    ros.cameras['right'].publish(broken)
    assert spin_until(ros, lambda: int(values(f'/{NODE}: camera right').get(
        'rejected: image', 0)) >= 1, timeout=DEADLINE_S)
    assert 'rejected: image' not in values(f'/{NODE}: camera left')
    assert 'input rate (Hz)' in values(f'/{NODE}: camera left')
    assert 'input rate (Hz)' not in values(f'/{NODE}: perception')  # the requests' status
    assert values(f'/{NODE}: perception')['model state'] == 'ready'
    assert values(f'/{NODE}: camera left')['model state'] == 'ready'


def test_cli_takes_the_camera(ros) -> None:
    publish_until(ros, ['right'], lambda: query(ros, camera='right').success, first_sec=700)
    result = cli('query', '--camera', 'right', '--json')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['frame_id'] == 'right_cam'
    result = cli('ask-topic', 'is there a cup?', '--camera', 'middle', '--timeout', '20')
    assert result.returncode == 1 and 'left, right' in result.stderr, result.stderr


@pytest.fixture(scope='module')
def compressed_node(tiny_preset):
    """Start a two-camera perception_node on compressed images in /cams; check a clean exit."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'cameras:=[front/left, rear]',
        '-p', 'compressed:=true', '-p', 'warmup:=false', '-p', 'capabilities:=[detect]',
        '-r', '__ns:=/cams'])
    yield node
    node.stop_cleanly()


def test_compressed_cameras_subscribe_their_image_compressed_topics(ros, compressed_node) -> None:
    compressed_node.require_ready()

    def subscriptions() -> dict:
        if NODE not in ros.get_node_names():
            return {}
        return dict(ros.get_subscriber_names_and_types_by_node(NODE, '/cams'))

    wanted = {'/cams/front/left/image/compressed', '/cams/rear/image/compressed'}
    assert spin_until(ros, lambda: wanted <= subscriptions().keys(), timeout=DEADLINE_S)
    assert subscriptions()['/cams/rear/image/compressed'] == ['sensor_msgs/msg/CompressedImage']
    assert not {'/cams/image/compressed', '/cams/front/left/image', '/cams/rear/image'} & \
        subscriptions().keys()
