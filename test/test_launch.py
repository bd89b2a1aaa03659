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
