"""
ROS-free perception core: models, caches, geometry and image conversion.

Kept light on purpose: nothing here imports torch, transformers or open_clip at import time; the
backends import them when a model is first loaded.
"""
