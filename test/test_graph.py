"""Two processes exchange every custom message type and call every custom service over DDS."""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from test_interfaces import sample_messages  # noqa: E402
from vlm_perception import msg, srv  # noqa: E402

PEER = Path(__file__).with_name('graph_peer.py')


@pytest.fixture(scope='module')
def peer():
    """Start the echo peer in its own process; stop it with SIGINT, as Ctrl-C would."""
    process = subprocess.Popen([sys.executable, str(PEER)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert process.stdout.readline().strip() == 'ready', process.stderr.read()
    yield process
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert 'Traceback' not in stderr


@pytest.fixture(scope='module')
def node(peer):
    """Return a node of this test process."""
    rclpy.init()
    test_node = rclpy.create_node('graph_test')
    yield test_node
    test_node.destroy_node()
    rclpy.shutdown()


def spin_until(node, done, timeout: float = 20.0) -> None:
    """Spin until done() is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)


@pytest.mark.parametrize('message',
                         [m for m in sample_messages() if hasattr(msg, type(m).__name__)],
                         ids=lambda m: type(m).__name__)
def test_message_crosses_processes(node, message) -> None:
    topic = type(message).__name__
    received = []
    subscription = node.create_subscription(type(message), f'{topic}_echo', received.append, 10)
    publisher = node.create_publisher(type(message), topic, 10)
    try:
        # Publish until the echo returns: discovery of a new topic takes a moment.
        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            publisher.publish(message)
            spin_until(node, lambda: bool(received), timeout=0.5)
        assert received, f'no echo on {topic}_echo'
        assert received[0] == message
    finally:
        node.destroy_subscription(subscription)
        node.destroy_publisher(publisher)


def call(node, service_type, name: str, request):
    """Call a service of the peer and return its response."""
    client = node.create_client(service_type, name)
    try:
        assert client.wait_for_service(timeout_sec=20.0), f'{name} not offered'
        future = client.call_async(request)
        spin_until(node, future.done)
        assert future.done(), f'{name} did not answer'
        return future.result()
    finally:
        node.destroy_client(client)


def test_query_service(node) -> None:
    request = srv.QueryScene.Request(question='what is red?', labels=['cup', 'ball'],
                                     caption=True, max_age=0.25)
    response = call(node, srv.QueryScene, 'query', request)
    assert response.success
    assert response.answer == 'what is red?'
    assert response.message == 'max_age=0.25 caption=True'
    assert [tag.label for tag in response.scene.tags] == ['cup', 'ball']
    assert response.scene.caption == 'caption'


def test_set_labels_service(node) -> None:
    response = call(node, srv.SetLabels, 'set_labels', srv.SetLabels.Request(labels=['a', 'b']))
    assert response.success and response.message == '2 labels'
    assert list(response.labels) == ['b', 'a']
