"""
Launch perception_node, optionally with the simulated shapes camera and rviz.

    ros2 launch vlm_perception vlm_perception.launch.py image:=/camera/color/image_raw
    ros2 launch vlm_perception vlm_perception.launch.py sim_camera:=true preset:=shapes rviz:=true
    ros2 launch vlm_perception vlm_perception.launch.py namespace:=robot1 respawn:=true
    ros2 launch vlm_perception vlm_perception.launch.py image:=/camera/camera/color/image_raw \
        depth:=/camera/camera/aligned_depth_to_color/image_raw use_depth:=true

Model and stream settings live in params_file (config/params.yaml by default); only preset,
use_depth and autostart have arguments of their own. Everything runs in `namespace`; the image,
depth and camera_info topics are remapped (camera_info defaults to the image topic's sibling, as
image_transport pairs them).

`enclave` (e.g. enclave:=/vlm_perception) starts perception_node and shapes_camera with
`--ros-args --enclave <enclave>`, for SROS2 graphs that keep unknown peers out: with
ROS_SECURITY_ENABLE=true and ROS_SECURITY_KEYSTORE holding that enclave's keys, the nodes join
the secured graph; without security enabled the enclave is ignored. Only that pass-through is
tested here, not a run with SROS2 keys.

The node's model-loading progress bars are off (VLM_PERCEPTION_PROGRESS=0, see
vlm_perception.core.loading): launch's pseudo-terminal has no width, so each bar would only be
an empty log line. Export VLM_PERCEPTION_PROGRESS=1 before launching to get them anyway.

Node and camera get config/fastdds_large_frames.xml as FASTDDS_DEFAULT_PROFILES_FILE unless one
is exported: Fast DDS's default shared memory is too small for a camera frame, which then goes
over fragmented UDP where best-effort frames are lost. Give the same file to a camera driver.
"""

import posixpath

from ament_index_python.packages import get_package_prefix, PackageNotFoundError
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import (EnvironmentVariable, LaunchConfiguration,
                                  PathJoinSubstitution)
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'vlm_perception'
ARGUMENTS = {
    'params_file': (PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'params.yaml']),
                    'YAML file with the node parameters'),
    'preset': ('', "model preset (default, shapes or a folder); empty = params_file's"),
    'image': ('image', 'image topic to subscribe (remaps image)'),
    'depth': ('depth', 'depth image topic registered to image (remaps depth)'),
    'camera_info': ('', 'camera_info of the image (remaps camera_info); empty = '
                        '<dirname(image)>/camera_info'),
    'use_depth': ('', "place detections in 3D from depth (true/false); empty = params_file's"),
    'autostart': ('', 'configure and activate perception_node at start (true/false); false = a '
                      "managed node for a lifecycle manager; empty = params_file's"),
    'namespace': ('', 'namespace of the node, camera and rviz'),
    'sim_camera': ('false', 'also start shapes_camera publishing on the image topic'),
    'rviz': ('false', 'also start rviz2 with the annotated image and markers'),
    'respawn': ('false', 'restart perception_node when it exits'),
    'enclave': ('', 'SROS2 security enclave of perception_node and shapes_camera '
                    '(--enclave); empty = none (untested here without SROS2 keys)'),
}
# Under launch the node's stderr is a pty (emulate_tty), so its own TTY test would keep the bars,
# drawn 0 columns wide: empty lines. A value the user exported still wins.
PROGRESS_ENV = 'VLM_PERCEPTION_PROGRESS'
FASTDDS_PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'


def _is_true(context: LaunchContext, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ('true', '1', 'yes')


def _camera_remappings(context: LaunchContext) -> list[tuple[str, str]]:
    """Remap image, depth and camera_info (by default the image topic's sibling)."""
    image = LaunchConfiguration('image').perform(context)
    camera_info = (LaunchConfiguration('camera_info').perform(context)
                   or posixpath.join(posixpath.dirname(image), 'camera_info'))
    return [('image', image), ('depth', LaunchConfiguration('depth').perform(context)),
            ('camera_info', camera_info)]


def _ros_arguments(context: LaunchContext) -> list[str] | None:
    """Return the ROS arguments both nodes get: the security enclave, where one is given."""
    enclave = LaunchConfiguration('enclave').perform(context).strip()
    return ['--enclave', enclave] if enclave else None  # [] would add a bare --ros-args


def _nodes(context: LaunchContext) -> list:
    parameters = [LaunchConfiguration('params_file')]
    preset = LaunchConfiguration('preset').perform(context)
    if preset:
        parameters.append({'preset': preset})
    for switch in ('use_depth', 'autostart'):
        if LaunchConfiguration(switch).perform(context):
            parameters.append({switch: _is_true(context, switch)})
    remappings = _camera_remappings(context)
    namespace = LaunchConfiguration('namespace')
    ros_arguments = _ros_arguments(context)
    large_frames = {FASTDDS_PROFILE_ENV: EnvironmentVariable(
        FASTDDS_PROFILE_ENV, default_value=PathJoinSubstitution(
            [FindPackageShare(PACKAGE), 'config', 'fastdds_large_frames.xml']))}
    return [
        Node(package=PACKAGE, executable='perception_node', name='vlm_perception',
             namespace=namespace, parameters=parameters, remappings=remappings,
             ros_arguments=ros_arguments, respawn=_is_true(context, 'respawn'),
             respawn_delay=2.0, output='screen', emulate_tty=True,
             additional_env={PROGRESS_ENV: EnvironmentVariable(PROGRESS_ENV, default_value='0'),
                             **large_frames}),
        Node(package=PACKAGE, executable='shapes_camera', name='shapes_camera',
             namespace=namespace, remappings=remappings, ros_arguments=ros_arguments,
             additional_env=large_frames,
             condition=IfCondition(LaunchConfiguration('sim_camera')), output='screen'),
        *(_rviz(namespace) if _is_true(context, 'rviz') else []),
    ]


def _rviz(namespace: LaunchConfiguration) -> list:
    """Return rviz2 with the package's view; a warning instead where rviz2 is not installed."""
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:  # a missing viewer must not abort the launch and orphan nodes
        return [LogInfo(msg='rviz:=true, but rviz2 is not installed: starting without it')]
    return [Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
                 arguments=['-d', PathJoinSubstitution(
                     [FindPackageShare(PACKAGE), 'config', 'vlm_perception.rviz'])])]


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: node, and camera and rviz on request."""
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        OpaqueFunction(function=_nodes),
    ])
