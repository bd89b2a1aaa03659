"""launch/vlm_perception.launch.py starts the node and the simulated camera (needs launch_ros)."""

from pathlib import Path
import re
import sys

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS 2 launch here)')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import ChildProcess, spin_until  # noqa: E402,I100
from std_msgs.msg import String  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[1] / 'launch' / 'vlm_perception.launch.py'
# What `ros2 launch` does, without needing ros2cli: arguments are NAME:=VALUE.
RUN_LAUNCH = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
service = LaunchService()
service.include_launch_description(IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]),
    launch_arguments=[tuple(arg.split(':=', 1)) for arg in sys.argv[2:]]))
sys.exit(service.run())
"""


def test_launch_starts_node_and_camera_in_the_namespace(tiny_preset) -> None:
    launch = ChildProcess([sys.executable, '-c', RUN_LAUNCH, str(LAUNCH_FILE), 'sim_camera:=true',
                           f'preset:={tiny_preset}', 'namespace:=launch_test'])
    rclpy.init()
    node = rclpy.create_node('launch_test_probe')

    def running() -> set[str]:
        return {f'{namespace.rstrip("/")}/{name}'
                for name, namespace in node.get_node_names_and_namespaces()}

    try:
        summaries = []
        node.create_subscription(String, '/launch_test/scene_text', summaries.append, 10)
        assert spin_until(node, lambda: {'/launch_test/vlm_perception',
                                         '/launch_test/shapes_camera'} <= running(),
                          timeout=90.0), launch.output()
        assert spin_until(node, lambda: summaries, timeout=60.0), launch.output()
    finally:
        node.destroy_node()
        rclpy.shutdown()
        launch.stop_cleanly()


def launch(*arguments: str) -> ChildProcess:
    """Run the launch file as `ros2 launch` would, in a process group of its own."""
    return ChildProcess([sys.executable, '-c', RUN_LAUNCH, str(LAUNCH_FILE), *arguments],
                        new_session=True)


def test_depth_topics_are_remapped_beside_the_image(tiny_preset) -> None:
    process = launch(f'preset:={tiny_preset}', 'namespace:=robot1', 'use_depth:=true',
                     'image:=/robot1/cam/color/image_raw', 'depth:=/robot1/cam/depth/image_raw')
    rclpy.init()
    node = rclpy.create_node('launch_remap_probe')
    expected = {'/robot1/cam/color/image_raw', '/robot1/cam/depth/image_raw',
                '/robot1/cam/color/camera_info'}  # camera_info beside the image

    def subscribed() -> set[str]:
        try:
            return {name for name, _ in node.get_subscriber_names_and_types_by_node(
                'vlm_perception', '/robot1')}
        except Exception:  # the node is not on the graph yet
            return set()

    try:
        assert spin_until(node, lambda: expected <= subscribed(), timeout=90.0), (
            subscribed(), process.output())
    finally:
        node.destroy_node()
        rclpy.shutdown()
        status, output = process.stop_group()
        assert status == 0 and 'Traceback' not in output, output


def test_rviz_without_rviz2_is_a_warning_not_a_failed_launch(tiny_preset) -> None:
    from ament_index_python.packages import get_package_prefix, PackageNotFoundError

    try:
        get_package_prefix('rviz2')
        pytest.skip('rviz2 is installed here')
    except PackageNotFoundError:
        pass
    process = launch(f'preset:={tiny_preset}', 'rviz:=true', 'namespace:=rviz_test')
    assert process.wait_for_output(']: ready on ', timeout=90.0), process.output()
    assert 'rviz2 is not installed' in process.output()
    status, output = process.stop_group()
    assert status == 0 and 'Traceback' not in output, output


def command_line(process: ChildProcess, name: str) -> list[str]:
    """Return the command line of the process launch names `name` (perception_node-1)."""
    started = re.search(rf'\[{re.escape(name)}\]: process started with pid \[(\d+)\]',
                        process.output())
    assert started, process.output()
    return Path(f'/proc/{started.group(1)}/cmdline').read_bytes().decode().split('\0')[:-1]


def ros_argument(arguments: list[str], flag: str) -> str | None:
    """Return the value given to a ROS argument flag after --ros-args, or None."""
    if '--ros-args' not in arguments:
        return None
    ros_args = arguments[arguments.index('--ros-args'):]
    return ros_args[ros_args.index(flag) + 1] if flag in ros_args[:-1] else None


def test_enclave_reaches_both_nodes_which_run_without_security(
        tiny_preset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('ROS_SECURITY_ENABLE', raising=False)  # the enclave is then ignored
    process = launch(f'preset:={tiny_preset}', 'sim_camera:=true', 'namespace:=enclave_test',
                     'enclave:=/vlm_perception')
    rclpy.init()
    node = rclpy.create_node('launch_enclave_probe')
    try:
        assert process.wait_for_output(']: ready on ', timeout=90.0), process.output()
        for name in ('perception_node-1', 'shapes_camera-2'):
            arguments = command_line(process, name)
            assert ros_argument(arguments, '--enclave') == '/vlm_perception', arguments
        summaries = []
        node.create_subscription(String, '/enclave_test/scene_text', summaries.append, 10)
        assert spin_until(node, lambda: summaries, timeout=60.0), process.output()
    finally:
        node.destroy_node()
        rclpy.shutdown()
        status, output = process.stop_group()
    assert status == 0 and 'Traceback' not in output, output


def test_no_enclave_and_no_progress_bar_lines_by_default(
        tiny_preset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('VLM_PERCEPTION_PROGRESS', raising=False)
    process = launch(f'preset:={tiny_preset}', 'namespace:=quiet_test')
    try:
        assert process.wait_for_output(']: ready on ', timeout=90.0), process.output()
        arguments = command_line(process, 'perception_node-1')
    finally:
        status, output = process.stop_group()
    assert status == 0 and 'Traceback' not in output, output
    assert '--enclave' not in arguments, arguments
    # the node's stderr is a 0-column pty (emulate_tty): each bar would be an empty line
    empty = [line for line in output.splitlines() if line.strip() == '[perception_node-1]']
    assert not empty and 'Loading weights' not in output, output
