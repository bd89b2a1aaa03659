"""
pip packaging of the ROS-free part of vlm_perception (engine, models, CLI).

ROS users build the whole package with colcon (CMakeLists.txt); this file serves users who only
want the Python API and the `vlm-perception` tool: `pip install .`.
"""

from glob import glob

from setuptools import find_packages, setup

setup(
    name='vlm_perception',
    version='0.1.0',
    description='Vision-language perception (OWL-ViT, CLIP, ViLT, BLIP) for robots',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['vlm_perception', 'vlm_perception.*']),
    package_data={'vlm_perception': ['models/*/*.json', 'models/*/*/*']},
    install_requires=[
        'numpy',
        'opencv-python-headless',
        'open_clip_torch',
        'pillow',
        'safetensors',
        'tokenizers',
        'torch',
        'torchvision',
        'transformers',
    ],
    # `pip install .[onnx]`: vlm-perception export --onnx and the onnxruntime runtimes;
    # `.[bag]`: vlm-perception bag and bag-shapes (rosbag2 recordings, no ROS needed)
    extras_require={'onnx': ['onnx', 'onnxscript', 'onnxruntime'], 'bag': ['rosbags', 'tqdm']},
    # the message definitions, for bag runs without a colcon build (<prefix>/share/...)
    data_files=[('share/vlm_perception/msg', sorted(glob('msg/*.msg')))],
    entry_points={'console_scripts': ['vlm-perception = vlm_perception.cli:main']},
)
