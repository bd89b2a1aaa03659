"""
perception_node as a managed (lifecycle) node, driven here as nav2's lifecycle manager would.

With autostart false the node waits unconfigured: configure loads the models, activate
subscribes and streams, deactivate stops inference and keeps the models, cleanup unloads them.
While not active, query and locate reply inactive, Questions get such an Answer, and only
/diagnostics is published.
"""

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_harness import (call, diagnostics_values, frame, image_publisher,  # noqa: E402
                          ros_node, spin_until)
from std_msgs.msg import String  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402

NODE = '/vlm_perception'


def managed_node(preset, *extra: str):
    """Start perception_node with autostart false on a preset."""
    return ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={preset}', '-p', 'capabilities:=[detect]', '-p', 'warmup:=false',
        '-p', 'autostart:=false', '-p', 'scene_period:=0.0', *extra])


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start a managed perception node on the tiny models; stop it cleanly at the end."""
    node = managed_node(tiny_preset)
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node: outputs recorded, an image publisher, lifecycle clients."""
    rclpy.init()
    node = rclpy.create_node('node_lifecycle_test')
    node.seen = {'detections': [], 'scene_text': [], 'answers': []}
    for topic, kind in (('detections', msg.DetectionArray), ('scene_text', String),
                        ('answers', msg.Answer)):
        node.create_subscription(kind, topic, node.seen[topic].append, 10)
    node.diagnostics = []
    node.create_subscription(DiagnosticArray, '/diagnostics', node.diagnostics.append, 10)
    node.images = image_publisher(node)
    node.questions = node.create_publisher(msg.Question, 'questions', 10)
    node.change = node.create_client(ChangeState, f'{NODE}/change_state')
    node.get_state = node.create_client(GetState, f'{NODE}/get_state')
    node.query = node.create_client(srv.QueryScene, 'query')
    assert node.get_state.wait_for_service(timeout_sec=60.0), perception.output()
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()


def state(node, client=None) -> str:
    """Return the lifecycle state label of the perception node (client: else get_state)."""
    return call(node, client or node.get_state, GetState.Request()).current_state.label


def transition(node, transition_id: int, client=None) -> bool:
    """Ask the perception node to change state; return whether it succeeded."""
    request = ChangeState.Request()
    request.transition.id = transition_id
    return call(node, client or node.change, request).success


def stream_for(node, seconds: float, first_sec: int) -> None:
    """Publish images stamped first_sec, first_sec + 1, ... for seconds."""
    for index in range(int(seconds / 0.1)):
        node.images.publish(frame(first_sec + index))
        spin_until(node, lambda: False, timeout=0.1)


def streamed(node, first_sec: int) -> list:
    """Return the detections about images stamped first_sec or later."""
    return [array for array in node.seen['detections'] if array.header.stamp.sec >= first_sec]


def ask(node, question_id: str) -> msg.Answer:
    """Publish a Question; return its Answer."""
    node.questions.publish(msg.Question(id=question_id, question='what is this?'))
    assert spin_until(node, lambda: any(a.id == question_id for a in node.seen['answers']),
                      timeout=15.0), f'no Answer to {question_id}'
    return next(a for a in node.seen['answers'] if a.id == question_id)


def test_unconfigured_it_replies_inactive_and_publishes_only_diagnostics(ros) -> None:
    assert state(ros) == 'unconfigured'
    stream_for(ros, 1.5, first_sec=100)
    response = call(ros, ros.query, srv.QueryScene.Request())
    assert not response.success and response.message == 'inactive (state unconfigured)'
    answer = ask(ros, 'q-unconfigured')
    assert not answer.success and answer.error == 'inactive (state unconfigured)'
    assert spin_until(ros, lambda: ros.diagnostics, timeout=5.0)
    assert diagnostics_values(ros.diagnostics[-1])['model state'] == 'unconfigured'
    assert not ros.seen['detections'] and not ros.seen['scene_text']


def test_configure_loads_models_and_activate_streams(ros, perception) -> None:
    assert transition(ros, Transition.TRANSITION_CONFIGURE)
    assert state(ros) == 'inactive'
    assert ']: ready on ' in perception.output()
    stream_for(ros, 1.0, first_sec=200)
    assert not streamed(ros, 200)  # inactive: no subscription, no inference
    response = call(ros, ros.query, srv.QueryScene.Request())
    assert response.message == 'inactive (state inactive)'

    assert transition(ros, Transition.TRANSITION_ACTIVATE)
    assert state(ros) == 'active'
    stream_for(ros, 1.0, first_sec=300)
    assert spin_until(ros, lambda: streamed(ros, 300), timeout=10.0), perception.output()
    assert call(ros, ros.query, srv.QueryScene.Request()).success
    assert ask(ros, 'q-active').error != 'inactive (state active)'


def test_deactivate_stops_inference_and_keeps_the_models(ros, perception) -> None:
    assert transition(ros, Transition.TRANSITION_DEACTIVATE)
    assert state(ros) == 'inactive'
    spin_until(ros, lambda: False, timeout=0.5)  # outputs of the last frame still in flight
    count = len(ros.seen['detections'])
    stream_for(ros, 1.0, first_sec=400)
    assert len(ros.seen['detections']) == count
    assert perception.output().count('loading models') == 1
    assert transition(ros, Transition.TRANSITION_ACTIVATE)
    stream_for(ros, 1.0, first_sec=500)
    assert spin_until(ros, lambda: streamed(ros, 500), timeout=10.0)
    assert perception.output().count('loading models') == 1  # kept, not loaded again


def test_cleanup_unloads_and_configure_loads_again(ros, perception) -> None:
    assert transition(ros, Transition.TRANSITION_DEACTIVATE)
    assert transition(ros, Transition.TRANSITION_CLEANUP)
    assert state(ros) == 'unconfigured'
    assert spin_until(ros, lambda: diagnostics_values(ros.diagnostics[-1]).get(
        'model state') == 'unconfigured', timeout=5.0)
    assert transition(ros, Transition.TRANSITION_CONFIGURE)
    assert perception.output().count('loading models') == 2
    assert transition(ros, Transition.TRANSITION_ACTIVATE)
    stream_for(ros, 1.0, first_sec=600)
    assert spin_until(ros, lambda: streamed(ros, 600), timeout=10.0)


def test_a_failed_configure_returns_failure_and_the_node_stays(ros, tmp_path) -> None:
    node = managed_node('shapes', '-p', f'detector_model:={tmp_path / "missing"}',
                        '-r', '__ns:=/failing')
    try:
        change = ros.create_client(ChangeState, f'/failing{NODE}/change_state')
        get_state = ros.create_client(GetState, f'/failing{NODE}/get_state')
        assert get_state.wait_for_service(timeout_sec=60.0), node.output()
        assert not transition(ros, Transition.TRANSITION_CONFIGURE, change)
        assert state(ros, get_state) == 'unconfigured'
        assert node.alive() and 'missing' in node.output()
    finally:
        node.stop_cleanly()
