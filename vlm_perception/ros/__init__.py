"""
ROS 2 face of the perception core: node, camera simulator, message conversions, CLI client.

Kept light: nothing here is imported by ``vlm_perception.msg`` and no module imports rclpy at
package import time.
"""
