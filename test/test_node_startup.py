"""perception_node refuses unusable models and parameters with one clear line, no traceback."""

import importlib.util

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import ros_node  # noqa: E402,I100


def run_to_exit(ros_args: list[str]) -> tuple[int, str]:
    """Run perception_node until it exits by itself; return status and output."""
    node = ros_node('vlm_perception.ros.node', ros_args)
    node.process.wait(timeout=120)
    return node.stop()


@pytest.mark.parametrize('override, message', [
    ('detector_model:=/nonexistent/owlvit', "'/nonexistent/owlvit'"),
    ('max_rate:=-3.0', 'max_rate'),
    ('image_reliability:=sometimes', 'image_reliability'),
    ('min_depth:=20.0', 'min_depth (20) must be below max_depth (10)'),
    pytest.param('target_frame:=base_link', 'needs tf2_ros', marks=pytest.mark.skipif(
        importlib.util.find_spec('tf2_ros') is not None, reason='tf2_ros is installed here')),
])
def test_unusable_settings_exit_with_one_fatal_line(
        tiny_preset, override: str, message: str) -> None:
    status, output = run_to_exit(['-p', f'preset:={tiny_preset}', '-p', override,
                                  '-p', 'capabilities:=[detect]'])
    assert status == 1, output
    fatal = [line for line in output.splitlines() if line.startswith('[FATAL]')]
    assert len(fatal) == 1 and message in fatal[0], output
    assert 'Traceback' not in output


@pytest.mark.parametrize('moment', [']: loading models for ', ']: ready on '])
def test_ctrl_c_while_configuring_is_a_stop_not_a_failure(tiny_preset, moment: str) -> None:
    """SIGINT while the models load, or as they become ready: exit 0, no FATAL line."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect]', '-p', 'warmup:=false'])
    assert node.wait_for_output(moment, timeout=120), node.output()
    status, output = node.stop()
    assert status == 0 and 'Traceback' not in output and '[FATAL]' not in output, output


def test_cuda_asked_for_without_cuda_names_the_device(tiny_preset) -> None:
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    status, output = run_to_exit(['-p', f'preset:={tiny_preset}', '-p', 'device:=cuda'])
    assert status == 1 and "device 'cuda'" in output and 'Traceback' not in output, output


def test_an_unknown_parameter_override_is_warned_with_the_closest_name(tiny_preset) -> None:
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect]', '-p', 'warmup:=false',
        '-p', 'max_rte:=3.0', '-p', 'detection_treshold:=0.2'])
    try:
        node.require_ready()  # not fatal: shared /** parameter files are common
        output = node.output()
        assert "unknown parameter 'max_rte' (did you mean 'max_rate'?)" in output, output
        assert "unknown parameter 'detection_treshold' (did you mean 'detection_threshold'?)" \
            in output, output
    finally:
        node.stop_cleanly()


def test_a_starved_node_says_so_on_diagnostics_and_scene_text(tiny_preset) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from node_harness import spin_until
    from std_msgs.msg import String

    node = ros_node('vlm_perception.ros.node', [
        '-r', '__ns:=/starved', '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect]',
        '-p', 'warmup:=false', '-p', 'image_timeout:=2.0', '-p', 'scene_period:=0.5'])
    rclpy.init()
    probe = rclpy.create_node('starved_probe')
    try:
        node.require_ready()
        texts, levels = [], []
        probe.create_subscription(String, '/starved/scene_text', lambda m: texts.append(m.data),
                                  10)
        probe.create_subscription(
            DiagnosticArray, '/diagnostics',
            lambda a: levels.extend((s.level, s.message) for s in a.status
                                    if s.name.startswith('/starved/')), 10)
        assert spin_until(probe, lambda: any(t.startswith('no image for ') for t in texts),
                          timeout=20.0), texts
        assert spin_until(probe, lambda: (DiagnosticStatus.WARN, 'no image for 2 s') in levels
                          or (DiagnosticStatus.WARN, 'no image for 3 s') in levels,
                          timeout=20.0), levels
        assert spin_until(probe, lambda: any(level == DiagnosticStatus.ERROR
                                             and message.startswith('no image for')
                                             for level, message in levels), timeout=20.0), levels
        assert 'no image for' in node.output()  # logged too
    finally:
        probe.destroy_node()
        rclpy.shutdown()
        node.stop_cleanly()
