"""
shapes_camera and perception_node with depth, as a user runs them.

`vlm-perception locate` and the README's planner snippet find a rendered object where the
camera's ground truth says it is.
"""

import json
from pathlib import Path
import re
import subprocess
import sys
import threading
from typing import Optional

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import cli, ROOT, ros_node, shapes_node  # noqa: E402,I100
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402

from vlm_perception import msg  # noqa: E402

OBJECT = 'red circle'  # in shapes_camera's default scene (seed 0), 1.77 m away
SNIPPET_MARK = '<!-- planner-snippet'
GOAL_LINE = 'navigator.goToPose(goal)'
UNPAIRED = 'no depth image within depth_slop'


@pytest.fixture(scope='module')
def camera_and_node():
    """Start shapes_camera and perception_node (shapes models, depth); stop both cleanly."""
    node = shapes_node('-p', 'use_depth:=true', '-p', 'capabilities:=[detect]',
                       '-p', 'warmup:=false')
    camera = ros_node('vlm_perception.ros.camera', ['-p', 'rate:=5.0'])
    node.require_ready()
    yield node
    camera.stop_cleanly()
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ground_truth(camera_and_node):
    """Collect shapes_camera's ground_truth by stamp, spun in a thread of its own."""
    rclpy.init()
    node = rclpy.create_node('locate_test')
    truth: dict[tuple[int, int], msg.DetectionArray] = {}

    def keep(array: msg.DetectionArray) -> None:
        truth[(array.header.stamp.sec, array.header.stamp.nanosec)] = array

    node.create_subscription(msg.DetectionArray, 'ground_truth', keep, QoSProfile(depth=50))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield truth
    executor.shutdown()
    thread.join(timeout=5.0)
    node.destroy_node()
    rclpy.shutdown()


def true_position(truth: dict, stamp: str, label: str) -> Optional[np.ndarray]:
    """Return the ground-truth position of label at the image stamped 'sec.nanosec', if seen."""
    sec, nanosec = (int(part) for part in stamp.split('.'))
    array = truth.get((sec, nanosec))
    if array is None:
        return None
    (match,) = [d for d in array.detections if d.label == label]
    return np.array([match.position.x, match.position.y, match.position.z])


def locate(*args: str) -> subprocess.CompletedProcess:
    """Run `vlm-perception locate OBJECT ARGS`, again while the latest frame has no depth."""
    for _ in range(20):  # best-effort frames or their depth images can be lost in transport
        result = cli('locate', OBJECT, *args, timeout=60.0)
        if UNPAIRED not in result.stderr:
            break
    return result


def test_cli_locate_prints_a_point_within_2_percent_of_the_truth(ground_truth) -> None:
    errors = []
    for _ in range(10):  # three calls on moving objects; a single bad detector box is reported
        if len(errors) == 3:
            break
        result = locate('--json')
        assert result.returncode == 0, result.stderr
        response = json.loads(result.stdout)
        point = response['point']
        assert point['frame_id'] == 'camera_optical_frame'
        truth = true_position(ground_truth, point['stamp'], OBJECT)
        if truth is None:  # its ground_truth message did not reach this test (depth 1)
            continue
        located = np.array([point['x'], point['y'], point['z']])
        errors.append(float(np.linalg.norm(located - truth) / truth[2]))
        print(f'{OBJECT}: located {located}, truth {truth}, error {errors[-1]:.4f} of range')
        assert response['detection']['label'] == OBJECT and response['detection']['has_position']
    assert len(errors) == 3 and np.median(errors) <= 0.02, errors

    text = locate()
    assert text.returncode == 0, text.stderr
    assert re.fullmatch(rf'{OBJECT}: \(-?\d+\.\d\d, -?\d+\.\d\d, \d+\.\d\d\) m in '
                        r'camera_optical_frame, score \d\.\d\d, image \d+\.\d\d s old\n',
                        text.stdout), text.stdout


def test_cli_locate_of_an_absent_object_says_no_match(camera_and_node) -> None:
    result = cli('locate', 'green square', timeout=60.0)
    assert result.returncode == 1 and 'no match' in result.stderr, result.stderr


def test_the_readme_planner_snippet_makes_a_goal_at_the_object(ground_truth) -> None:
    readme = (ROOT / 'README.md').read_text()
    block = readme[readme.index(SNIPPET_MARK):]
    block = block[block.index('```python\n') + len('```python\n'):]
    code = block[:block.index('\n```')]
    assert len(code.splitlines()) <= 10 and GOAL_LINE in code
    # The goal-sending line needs Nav2; print the goal instead, with its stamp.
    code = code.replace(GOAL_LINE, 'print(goal.header.frame_id, goal.header.stamp.sec, '
                                   'goal.header.stamp.nanosec, goal.pose.position.x, '
                                   'goal.pose.position.y, goal.pose.position.z)')
    errors = []
    for _ in range(10):  # as in the CLI test: three goals, the median within 2 %
        if len(errors) == 3:
            break
        for _ in range(20):  # as in locate(): again while the latest frame has no depth
            result = subprocess.run([sys.executable, '-c', code], cwd=Path(ROOT),
                                    capture_output=True, text=True, timeout=60)
            if UNPAIRED not in result.stderr:
                break
        assert result.returncode == 0, result.stderr
        frame_id, sec, nanosec, *position = result.stdout.split()
        assert frame_id == 'camera_optical_frame'
        truth = true_position(ground_truth, f'{sec}.{nanosec}', OBJECT)
        if truth is None:
            continue
        errors.append(float(np.linalg.norm(np.array(position, dtype=float) - truth) / truth[2]))
    assert len(errors) == 3 and np.median(errors) <= 0.02, errors
