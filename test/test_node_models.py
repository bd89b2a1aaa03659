"""
perception_node's models at run time: replaced while serving, and out of memory survived.

A model parameter set at run time loads the new model beside the one serving, which answers
until the swap and stays when the new one fails (the parameter is then set back). Out of memory
is injected with VLM_PERCEPTION_INJECT_OOM (never a parameter): the frame or request fails, is
counted, and the node goes on.
"""

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from node_harness import (call, client_of, diagnostics_values, frame,  # noqa: E402
                          get_parameter, image_publisher, probe, ros_node, set_parameter,
                          spin_until)

from vlm_perception import msg, srv  # noqa: E402

NODE = '/vlm_perception'


@pytest.fixture(scope='module')
def other_detector(tmp_path_factory):
    """Build a tiny OWL-ViT with other weights than the tiny preset's (other detections)."""
    from tiny_models import build_owlvit

    return build_owlvit(tmp_path_factory.mktemp('other_detector') / 'owlvit', seed=1)


def start(preset, name: str, env=None):
    """Start perception_node (detect on the stream) in namespace name."""
    return ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={preset}', '-p', 'capabilities:=[detect]', '-p', 'warmup:=false',
        '-r', f'__ns:=/{name}'], env=env)


def query(node, namespace: str) -> srv.QueryScene.Response:
    """Ask the perception node in namespace about its latest frame (detections only)."""
    return call(node, client_of(node, srv.QueryScene, f'/{namespace}/query'),
                srv.QueryScene.Request(caption=False))


def feed(node, namespace: str, sec: int) -> None:
    """Publish one image stamped sec until the node answers a query about it."""
    publisher = image_publisher(node, f'/{namespace}/image')
    for _ in range(50):
        publisher.publish(frame(sec))
        response = query(node, namespace)
        if response.success and response.scene.header.stamp.sec == sec:
            return
        spin_until(node, lambda: False, timeout=0.2)
    raise AssertionError(f'image {sec} never answered about: {response.message}')


def boxes(response: srv.QueryScene.Response) -> list:
    """Return the detections of a query, rounded, for comparing models."""
    return [(d.label, round(d.score, 4), round(d.center_x, 1)) for d in response.scene.detections]


@pytest.fixture(scope='module')
def swapping(tiny_preset):
    """Start a perception node whose detector the tests replace."""
    node = start(tiny_preset, 'swapping')
    yield node
    node.stop_cleanly()


def test_a_new_detector_serves_after_the_swap_and_a_failed_one_leaves_the_old(
        swapping, other_detector, tmp_path) -> None:
    with probe(swapping, 'node_models_swap_test') as node:
        feed(node, 'swapping', 10)
        before = boxes(query(node, 'swapping'))
        assert set_parameter(node, 'detector_model', str(other_detector),
                             '/swapping' + NODE).successful
        assert swapping.wait_for_output(f'detect: now {other_detector}', timeout=60.0), \
            swapping.output()
        after = boxes(query(node, 'swapping'))
        assert after != before  # other weights, same frame

        missing = tmp_path / 'missing'
        assert set_parameter(node, 'detector_model', str(missing), '/swapping' + NODE).successful
        assert swapping.wait_for_output(f'keeping {other_detector}', timeout=60.0), \
            swapping.output()
        assert spin_until(node, lambda: get_parameter(node, 'detector_model', '/swapping' + NODE)
                          == str(other_detector), timeout=10.0)  # set back: names the model
        assert boxes(query(node, 'swapping')) == after
        assert swapping.alive()


def test_out_of_memory_skips_frames_and_requests_and_the_node_goes_on(tiny_preset) -> None:
    perception = start(tiny_preset, 'oom', env={'VLM_PERCEPTION_INJECT_OOM': 'call:3'})
    try:
        with probe(perception, 'node_models_oom_test') as node:
            diagnostics = []
            node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
            detections = []
            node.create_subscription(msg.DetectionArray, '/oom/detections', detections.append,
                                     10)
            publisher = image_publisher(node, '/oom/image')
            failures = []
            for sec in range(1, 40):
                publisher.publish(frame(sec))
                response = query(node, 'oom')
                if not response.success:
                    failures.append(response.message)
                spin_until(node, lambda: False, timeout=0.1)

            def out_of_memory() -> int:
                values = [diagnostics_values(d) for d in diagnostics
                          if '/oom/' in str([s.name for s in d.status])]
                return int(values[-1].get('errors: out of memory', 0)) if values else 0

            assert spin_until(node, lambda: out_of_memory() >= 5, timeout=10.0), diagnostics
            assert any(message.startswith('out of memory in detect') for message in failures)
            assert len(detections) >= 5  # the stream goes on between faults
            assert 'Traceback' not in perception.output()
    finally:
        perception.stop_cleanly()


def test_former_model_parameter_names_set_the_new_ones_with_a_warning(
        tiny_preset, tiny_models) -> None:
    tagger, captioner = str(tiny_models['classifier']), str(tiny_models['captioner'])
    perception = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect, tags]',
        '-p', 'warmup:=false', '-p', f'classifier_model:={tagger}', '-r', '__ns:=/aliases'])
    try:
        with probe(perception, 'node_models_alias_test') as node:
            assert "parameter 'classifier_model' is deprecated, use 'tagger_model'" \
                in perception.output()
            assert f'tags: {tagger}' in perception.output()  # the tagger loaded is the alias's
            assert get_parameter(node, 'tagger_model', '/aliases' + NODE) == tagger
            assert get_parameter(node, 'classifier_model', '/aliases' + NODE) == ''
            assert set_parameter(node, 'caption_model', captioner, '/aliases' + NODE).successful
            assert perception.wait_for_output(
                "parameter 'caption_model' is deprecated, use 'captioner_model'", timeout=10.0)
            assert spin_until(node, lambda: get_parameter(
                node, 'captioner_model', '/aliases' + NODE) == captioner, timeout=10.0)
            assert perception.wait_for_output(f'caption: now {captioner}', timeout=30.0), \
                perception.output()
    finally:
        perception.stop_cleanly()
