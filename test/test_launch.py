"""launch/vlm_perception.launch.py starts the node and the simulated camera (needs launch_ros)."""

from pathlib import Path
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
