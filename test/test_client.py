"""PerceptionClient and the locate CLI against a stand-in perception node (client_peer.py)."""

import json
from pathlib import Path
import re
import sys
import time

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from client_peer import CUP, SCENE_SUMMARY  # noqa: E402,I100
from node_harness import ChildProcess, cli  # noqa: E402

from vlm_perception import srv  # noqa: E402
from vlm_perception.ros.client import (PerceptionClient, PerceptionError,  # noqa: E402
                                       PerceptionTimeout)

PEER = Path(__file__).with_name('client_peer.py')


@pytest.fixture(scope='module')
def peer():
    """Start the stand-in node; stop it with SIGINT and check a clean exit."""
    process = ChildProcess([sys.executable, str(PEER)])
    assert process.wait_for_output('ready', timeout=30.0), process.output()
    yield process
    process.stop_cleanly()


@pytest.fixture(scope='module')
def ros(peer):
    """Initialise rclpy in this process for the module."""
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def perception(ros):
    """Return a client with its own node; destroyed after the test."""
    with PerceptionClient() as client:
        yield client


def test_query_returns_the_reply(perception) -> None:
    response = perception.query('how many?', labels=['cup', 'dog'], caption=True, max_age=2.0)
    assert isinstance(response, srv.QueryScene.Response)
    assert response.message == 'max_age=2 caption=True'
    assert response.answer == 'answer to how many?'
    assert [tag.label for tag in response.scene.tags] == ['cup', 'dog']
    assert response.scene.caption == 'caption'
    assert perception.query().scene.summary == SCENE_SUMMARY  # the same client again


def test_query_failure_raises_with_the_response(perception) -> None:
    with pytest.raises(PerceptionError) as raised:
        perception.query(max_age=0.5)
    assert str(raised.value) == 'stale: image 0.5 s old'
    assert raised.value.response.message == 'stale: image 0.5 s old'
    assert not isinstance(raised.value, PerceptionTimeout)


def test_set_labels_returns_the_vocabulary(perception) -> None:
    assert perception.set_labels(['cup ', 'dog']) == ['dog', 'cup']
    with pytest.raises(PerceptionError, match='empty vocabulary') as raised:
        perception.set_labels([])
    assert list(raised.value.response.labels) == ['old']


def test_locate_returns_the_point_and_detection(perception) -> None:
    response = perception.locate(CUP, max_age=1.5)
    assert isinstance(response, srv.Locate.Response)
    assert response.message == 'max_age=1.5'
    assert response.point.header.frame_id == 'map'
    point = response.point.point
    assert (point.x, point.y, point.z) == (1.0, 2.0, 3.0)
    assert response.detection.label == CUP and response.detection.has_position
    assert response.detection.position.z == pytest.approx(1.5)
    assert [match.score for match in response.matches] == pytest.approx([0.875, 0.25])


def test_locate_failure_raises_with_the_response(perception) -> None:
    with pytest.raises(PerceptionError) as raised:
        perception.locate('green dragon')
    assert raised.value.response.message.startswith('no match')
    assert str(raised.value) == raised.value.response.message
    assert not raised.value.response.success


def test_ask_returns_the_answer_with_its_id(perception) -> None:
    first = perception.ask('how many cups?')
    assert first.success and first.answer == 'two' and first.question == 'how many cups?'
    assert first.confidence == pytest.approx(0.75)
    second = perception.ask('and now?')
    assert second.id != first.id and second.question == 'and now?'
    with pytest.raises(PerceptionError, match='empty question') as raised:
        perception.ask('  ')
    assert raised.value.response.id and not raised.value.response.success


def test_latest_scene_gets_the_scene_published_before_the_client(perception) -> None:
    started = time.monotonic()
    scene = perception.latest_scene(timeout=5.0)
    assert scene.summary == SCENE_SUMMARY and scene.header.frame_id == 'peer_camera'
    assert scene.header.stamp.sec == 123
    again = perception.latest_scene(timeout=1.0)  # no new one: the newest received
    assert again.summary == SCENE_SUMMARY
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize('call', [
    lambda client: client.locate(CUP, timeout=1.0),
    lambda client: client.query(timeout=1.0),
    lambda client: client.ask('anyone?', timeout=1.0),
    lambda client: client.latest_scene(timeout=1.0),
], ids=['locate', 'query', 'ask', 'latest_scene'])
def test_nothing_in_the_namespace_times_out(ros, call) -> None:
    with PerceptionClient(namespace='nowhere') as client:
        started = time.monotonic()
        with pytest.raises(PerceptionTimeout) as raised:
            call(client)
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    assert '/nowhere/' in str(raised.value)
    assert 'is perception_node running in this namespace and ROS_DOMAIN_ID?' in str(raised.value)


def test_a_given_node_is_used_and_spun(ros) -> None:
    node = rclpy.create_node('client_test_host')
    before = (len(list(node.clients)), len(list(node.publishers)),
              len(list(node.subscriptions)), len(list(node.guards)))
    try:
        with PerceptionClient(node=node) as client:
            assert client.node is node
            assert client.locate(CUP).point.header.frame_id == 'map'
            assert client.ask('how many?').answer == 'two'
            assert client.latest_scene().summary == SCENE_SUMMARY
            assert node.count_subscribers('/questions') >= 1
        assert (len(list(node.clients)), len(list(node.publishers)),
                len(list(node.subscriptions)), len(list(node.guards))) == before
    finally:
        node.destroy_node()


def test_a_given_node_with_a_namespace_prefixes_the_names(ros) -> None:
    node = rclpy.create_node('client_test_prefixed')
    try:
        with PerceptionClient(namespace='/nowhere', node=node) as client:
            with pytest.raises(PerceptionTimeout, match='/nowhere/locate'):
                client.locate(CUP, timeout=0.5)
    finally:
        node.destroy_node()


def test_cli_locate_prints_one_line(peer) -> None:
    result = cli('locate', CUP, '--max-age', '1')
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r'red cup: \(1\.00, 2\.00, 3\.00\) m in map, score 0\.88, '
                        r'image \d+\.\d\d s old\n', result.stdout), result.stdout
    assert float(result.stdout.split('image ')[1].split()[0]) < 10.0  # the peer stamps now


def test_cli_locate_json(peer) -> None:
    result = cli('locate', CUP, '--json')
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply['success'] and reply['message'] == 'max_age=0'
    assert {key: reply['point'][key] for key in ('frame_id', 'x', 'y', 'z')} == {
        'frame_id': 'map', 'x': 1.0, 'y': 2.0, 'z': 3.0}
    assert re.fullmatch(r'\d+\.\d{9}', reply['point']['stamp'])
    detection = reply['detection']
    assert detection['label'] == CUP and detection['has_position']
    assert detection['position'] == pytest.approx({'x': 0.1, 'y': 0.2, 'z': 1.5})
    assert detection['size'] == pytest.approx({'x': 0.08, 'y': 0.1, 'z': 0.02})
    assert {'center_x', 'center_y', 'size_x', 'size_y', 'score'} <= detection.keys()
    assert [match['score'] for match in reply['matches']] == pytest.approx([0.875, 0.25])


def test_cli_locate_failure_and_timeout(peer) -> None:
    result = cli('locate', 'green dragon')
    assert result.returncode == 1 and not result.stdout
    # the last line: the DDS library may print its own warnings to stderr first
    assert result.stderr.splitlines()[-1].startswith('vlm-perception: error: no match'), \
        result.stderr

    result = cli('locate', CUP, '--namespace', 'elsewhere', '--timeout', '1')
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        'vlm-perception: error: service /elsewhere/locate'), result.stderr
