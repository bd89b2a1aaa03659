"""
Launch perception_node, optionally with the simulated shapes camera and rviz.

    ros2 launch vlm_perception vlm_perception.launch.py image:=/camera/color/image_raw
    ros2 launch vlm_perception vlm_perception.launch.py sim_camera:=true preset:=shapes rviz:=true
    ros2 launch vlm_perception vlm_perception.launch.py namespace:=robot1 respawn:=true

Model and stream settings live in params_file (config/params.yaml by default); only the preset
has its own argument. Everything runs in `namespace`; the image topic is remapped to `image`.
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'vlm_perception'
ARGUMENTS = {
    'params_file': (PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'params.yaml']),
                    'YAML file with the node parameters'),
    'preset': ('', "model preset (default, shapes or a folder); empty = params_file's"),
    'image': ('image', 'image topic to subscribe (remaps image)'),
    'namespace': ('', 'namespace of the node, camera and rviz'),
    'sim_camera': ('false', 'also start shapes_camera publishing on the image topic'),
    'rviz': ('false', 'also start rviz2 with the annotated image and markers'),
    'respawn': ('false', 'restart perception_node when it exits'),
}


def _is_true(context: LaunchContext, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ('true', '1', 'yes')


def _perception_node(context: LaunchContext) -> list:
    parameters = [LaunchConfiguration('params_file')]
    preset = LaunchConfiguration('preset').perform(context)
    if preset:
        parameters.append({'preset': preset})
    return [Node(package=PACKAGE, executable='perception_node', name='vlm_perception',
                 namespace=LaunchConfiguration('namespace'), parameters=parameters,
                 remappings=[('image', LaunchConfiguration('image'))],
                 respawn=_is_true(context, 'respawn'), respawn_delay=2.0, output='screen',
                 emulate_tty=True)]


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: node, and camera and rviz on request."""
    namespace = LaunchConfiguration('namespace')
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        OpaqueFunction(function=_perception_node),
        Node(package=PACKAGE, executable='shapes_camera', name='shapes_camera',
             namespace=namespace, remappings=[('image', LaunchConfiguration('image'))],
             condition=IfCondition(LaunchConfiguration('sim_camera')), output='screen'),
        Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
             arguments=['-d', PathJoinSubstitution(
                 [FindPackageShare(PACKAGE), 'config', 'vlm_perception.rviz'])],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
