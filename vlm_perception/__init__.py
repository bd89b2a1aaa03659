"""
Vision-language perception for ROS 2.

Kept free of heavy imports: ``vlm_perception.msg`` and ``vlm_perception.srv`` are generated into
this package, and importing them must not pull in torch, transformers or rclpy.
"""

from pkgutil import extend_path

# Run from a source checkout, this directory shadows the colcon install that also holds the
# generated msg/srv modules: search both.
__path__ = extend_path(__path__, __name__)

__version__ = '0.1.0'
