"""Vision-language perception for ROS 2.

Kept free of heavy imports: ``vlm_perception.msg`` and ``vlm_perception.srv`` are generated into
this package, and importing them must not pull in torch, transformers or rclpy.
"""

__version__ = '0.1.0'
