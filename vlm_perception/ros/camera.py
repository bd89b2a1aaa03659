"""
Simulated camera: shapes-world frames with slowly drifting objects, for demos, tests and rviz.

The objects are flat cut-outs at distinct distances (0.8..4 m) in front of a wall at 5 m, seen
by an ideal pinhole camera; depth and ground truth describe exactly what the image shows.

Published Topics (all with one header per frame):
    image (sensor_msgs/Image): rgb8 frames at `rate` Hz, stamped now, frame_id `frame_id`.
    camera_info (sensor_msgs/CameraInfo): a pinhole model of `fov` degrees, no distortion.
    depth (sensor_msgs/Image): 16UC1 millimetres, registered to image (same size and K).
    ground_truth (vlm_perception/DetectionArray): every object: name, score 1, box in pixels,
        3D centre and metric size (flat: z 0) in the optical frame, has_position true.
All are reliable with depth 1, which best-effort and reliable subscribers both accept.

Parameters (read-only):
    rate (double, Hz), width, height (int, pixels), fov (double, horizontal degrees),
    speed (double, pixels per second of drift), seed (int),
    scene_seconds (double, default 0 = never): a new scene every so many seconds, scene n
        drawn from shapes.drift.scene_rng(seed, n), its caption and objects logged,
    frame_id (string, default camera_optical_frame: REP 103 optical, z forward).
"""

import signal
import sys
from typing import Optional

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from vlm_perception import msg
from vlm_perception.core import message_layout as layout
from vlm_perception.ros.conversions import detections_to_msg, make, rgb_to_image
from vlm_perception.shapes.drift import DriftingScene, pinhole_k, scene_rng

# What publishing raises once Ctrl-C has shut the context down under a running timer.
_SHUTDOWN_ERRORS = (_rclpy.RCLError, InvalidHandle)


def camera_info(header: Header, width: int, height: int, fov_degrees: float) -> CameraInfo:
    """Return the CameraInfo of an ideal pinhole camera (no distortion, centred)."""
    return layout.pinhole_camera_info(make, header, width, height,
                                      pinhole_k(width, height, fov_degrees))


def depth_to_image(metres: np.ndarray, header: Header) -> Image:
    """Return a 16UC1 sensor_msgs/Image of (H, W) depths in metres: millimetres, rounded."""
    return layout.depth_image(make, metres, header)


def _range(low: float, high: float) -> dict:
    if isinstance(low, int) and isinstance(high, int):
        return {'integer_range': [IntegerRange(from_value=low, to_value=high, step=1)]}
    return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high, step=0.0)]}


class ShapesCamera(Node):
    """Publish shapes-world frames, camera_info, depth and ground truth at a fixed rate."""

    def __init__(self, **kwargs) -> None:
        super().__init__('shapes_camera', **kwargs)
        declared = {
            'rate': (10.0, 'Frames per second.', (0.1, 120.0)),
            'width': (640, 'Image width, pixels.', (64, 4096)),
            'height': (480, 'Image height, pixels.', (64, 4096)),
            'fov': (60.0, 'Horizontal field of view, degrees.', (1.0, 179.0)),
            'speed': (20.0, 'Drift speed of the objects, pixels per second.', (0.0, 1000.0)),
            'seed': (0, 'Seed of the scene (objects, colours, distances, noise).', (0, 2**31 - 1)),
            'scene_seconds': (0.0, 'Seconds between new scenes (scene n drawn from seed and n, '
                              'its content logged); 0 = one scene for ever.', (0.0, 86400.0)),
            'frame_id': ('camera_optical_frame',
                         'frame_id of the published headers (an optical frame).', None),
        }
        for name, (default, description, limits) in declared.items():
            extra = _range(*limits) if limits else {}
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=True, **extra))
        value = {name: self.get_parameter(name).value for name in declared}
        self._frame_id, self._fov, self._seed = value['frame_id'], value['fov'], value['seed']
        self._scene_args = (value['width'], value['height'], value['speed'], value['fov'])
        self._scene_index = 0
        self._scene = DriftingScene(scene_rng(self._seed), *self._scene_args)
        self._period = 1.0 / value['rate']
        qos = QoSProfile(depth=1)
        self._image_pub = self.create_publisher(Image, 'image', qos)
        self._info_pub = self.create_publisher(CameraInfo, 'camera_info', qos)
        self._depth_pub = self.create_publisher(Image, 'depth', qos)
        self._truth_pub = self.create_publisher(msg.DetectionArray, 'ground_truth', qos)
        self.create_timer(self._period, self._publish)
        every = value['scene_seconds']
        if every > 0:
            self.create_timer(every, self._next_scene)  # one executor thread: between frames
        self.get_logger().info(f'publishing {value["width"]}x{value["height"]} at '
                               f'{value["rate"]:g} Hz: {self._scene.caption}'
                               + (f' (a new scene every {every:g} s)' if every > 0 else ''))

    def _next_scene(self) -> None:
        """Show the seed's next scene and log what it shows (the objects' centres in metres)."""
        self._scene_index += 1
        self._scene = DriftingScene(scene_rng(self._seed, self._scene_index), *self._scene_args)
        objects = ', '.join(f'{truth.label} at ({truth.position[0]:.2f}, '
                            f'{truth.position[1]:.2f}, {truth.position[2]:.2f})'
                            for truth in self._scene.ground_truth())
        self.get_logger().info(f'scene {self._scene_index} of seed {self._seed}: '
                               f'{self._scene.caption}; objects (m, {self._frame_id}): '
                               f'{objects}')

    def _publish(self) -> None:
        if not self.context.ok():
            return
        rgb = self._scene.step(self._period)
        try:
            header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._frame_id)
            self._image_pub.publish(rgb_to_image(rgb, header))
            self._info_pub.publish(camera_info(header, rgb.shape[1], rgb.shape[0], self._fov))
            self._depth_pub.publish(depth_to_image(self._scene.depth_metres(), header))
            self._truth_pub.publish(detections_to_msg(self._scene.ground_truth(), header))
        except _SHUTDOWN_ERRORS:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down while this frame was being sent: spin ends next


def main(args: Optional[list[str]] = None) -> int:
    """Run the simulated camera until Ctrl-C."""
    rclpy.init(args=args)
    node = None
    try:
        node = ShapesCamera()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
