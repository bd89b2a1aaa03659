"""
Simulated camera: shapes-world frames with slowly drifting objects, for demos, tests and rviz.

Published Topics:
    image (sensor_msgs/Image): rgb8 frames at `rate` Hz, stamped now, frame_id `frame_id`.
    camera_info (sensor_msgs/CameraInfo): a pinhole model of `fov` degrees, same header.
Both are reliable with depth 1, which best-effort and reliable subscribers both accept.

Parameters (read-only):
    rate (double, Hz), width, height (int, pixels), fov (double, horizontal degrees),
    speed (double, pixels per second of drift), seed (int), frame_id (string).
"""

import math
import sys
from typing import Optional

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from vlm_perception.ros.conversions import rgb_to_image
from vlm_perception.ros.drift import DriftingScene


def camera_info(header: Header, width: int, height: int, fov_degrees: float) -> CameraInfo:
    """Return the CameraInfo of an ideal pinhole camera (no distortion, centred)."""
    focal = width / (2 * math.tan(math.radians(fov_degrees) / 2))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return CameraInfo(header=header, width=width, height=height, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=[focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def _range(low: float, high: float) -> dict:
    if isinstance(low, int) and isinstance(high, int):
        return {'integer_range': [IntegerRange(from_value=low, to_value=high, step=1)]}
    return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high, step=0.0)]}


class ShapesCamera(Node):
    """Publish rendered shapes-world frames on image and camera_info at a fixed rate."""

    def __init__(self, **kwargs) -> None:
        super().__init__('shapes_camera', **kwargs)
        declared = {
            'rate': (10.0, 'Frames per second.', (0.1, 120.0)),
            'width': (640, 'Image width, pixels.', (64, 4096)),
            'height': (480, 'Image height, pixels.', (64, 4096)),
            'fov': (60.0, 'Horizontal field of view for camera_info, degrees.', (1.0, 179.0)),
            'speed': (20.0, 'Drift speed of the objects, pixels per second.', (0.0, 1000.0)),
            'seed': (0, 'Seed of the scene (objects, colours, noise).', (0, 2**31 - 1)),
            'frame_id': ('camera', 'frame_id of the published headers.', None),
        }
        for name, (default, description, limits) in declared.items():
            extra = _range(*limits) if limits else {}
            self.declare_parameter(name, default, ParameterDescriptor(
                description=description, read_only=True, **extra))
        value = {name: self.get_parameter(name).value for name in declared}
        self._frame_id, self._fov = value['frame_id'], value['fov']
        self._scene = DriftingScene(np.random.default_rng(value['seed']), value['width'],
                                    value['height'], value['speed'])
        self._period = 1.0 / value['rate']
        qos = QoSProfile(depth=1)
        self._image_pub = self.create_publisher(Image, 'image', qos)
        self._info_pub = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.create_timer(self._period, self._publish)
        self.get_logger().info(f'publishing {value["width"]}x{value["height"]} at '
                               f'{value["rate"]:g} Hz: {self._scene.caption}')

    def _publish(self) -> None:
        rgb = self._scene.step(self._period)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._frame_id)
        self._image_pub.publish(rgb_to_image(rgb, header))
        self._info_pub.publish(camera_info(header, rgb.shape[1], rgb.shape[0], self._fov))


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
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
