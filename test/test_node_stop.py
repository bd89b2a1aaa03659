"""perception_node stops cleanly on Ctrl-C to its process group and on SIGTERM, mid-inference."""

import os
import signal
import time

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import ros_node  # noqa: E402,I100

ADDED_LATENCY_S = 0.4  # SIGINT then most likely lands while a frame is being processed


def start_fed_node(tiny_preset):
    """Start the camera and a slowed node in sessions of their own; return both once busy."""
    camera = ros_node('vlm_perception.ros.camera', ['-p', 'rate:=20.0'], new_session=True)
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect]', '-p', 'warmup:=false'],
        env={'VLM_PERCEPTION_ADDED_LATENCY': str(ADDED_LATENCY_S)}, new_session=True)
    node.require_ready()
    time.sleep(2 * ADDED_LATENCY_S + 1.0)  # frames are flowing and being processed
    return camera, node


def assert_clean(status: int, output: str) -> None:
    """Exit 0, no traceback and no ERROR line, as a user stopping it expects."""
    assert status == 0, output
    assert 'Traceback' not in output and '[ERROR]' not in output, output


@pytest.mark.parametrize('attempt', range(3))
def test_ctrl_c_mid_inference_exits_without_error(tiny_preset, attempt: int) -> None:
    camera, node = start_fed_node(tiny_preset)
    try:
        assert_clean(*node.stop_group())
    finally:
        assert_clean(*camera.stop_group())


def test_ctrl_c_twice_exits_without_traceback(tiny_preset) -> None:
    camera, node = start_fed_node(tiny_preset)
    try:
        os.killpg(node.process.pid, signal.SIGINT)
        time.sleep(0.05)  # a second Ctrl-C while the first one is being handled
        assert_clean(*node.stop_group())
    finally:
        assert_clean(*camera.stop_group())


def test_sigterm_mid_inference_exits_without_error(tiny_preset) -> None:
    camera, node = start_fed_node(tiny_preset)  # as systemd, docker stop or kill would stop them
    try:
        for child in (node, camera):
            child.process.send_signal(signal.SIGTERM)
        for child in (node, camera):
            child.process.wait(timeout=20)
            assert_clean(child.process.returncode, child.output())
    finally:
        for child in (node, camera):
            if child.alive():
                child.stop()
