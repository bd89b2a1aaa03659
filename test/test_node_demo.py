"""The `make demo` script runs camera and node, prints what the node sees, and stops both."""

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')


def test_demo_with_the_tiny_preset(tiny_preset) -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'vlm_perception.ros.demo', '--preset', str(tiny_preset),
         '--seconds', '1.5'], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Scene summaries' in result.stdout
    assert result.stdout.count(' -> ') == 2  # two questions, two answers
    assert 'Located through the locate service' in result.stdout
    assert ' m in camera_optical_frame, ' in result.stdout and '(truth: ' in result.stdout
    assert 'camera and node stopped' in result.stdout


def test_demo_without_its_preset_says_so() -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'vlm_perception.ros.demo', '--preset', '/nonexistent/preset'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and '/nonexistent/preset' in result.stderr
