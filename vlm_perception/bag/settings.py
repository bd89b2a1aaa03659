"""What a bag run reads and runs (no rosbags needed: the command's defaults come from here)."""

from dataclasses import dataclass
from typing import Optional

from vlm_perception.core.errors import InputError
from vlm_perception.ros.parameters import SPEC_BY_NAME  # the node's parameters, as data

NODE = {name: SPEC_BY_NAME[name].default for name in (
    'scene_period', 'depth_scale', 'min_depth', 'max_depth', 'depth_slop', 'memory_period',
    'memory_change')}

# What a bag run can do: vqa has no questions to answer in a recording.
BAG_CAPABILITIES = ('detect', 'tags', 'caption', 'segment')
DEFAULT_BAG_CAPABILITIES = ('detect', 'tags', 'caption')


@dataclass
class BagSettings:
    """
    How a run reads its recording and what it runs; None means the default (topics.py).

    The numbers default to the node's parameters of the same names.
    """

    image_topic: Optional[str] = None
    depth_topic: Optional[str] = None       # '' = no depth
    camera_info_topic: Optional[str] = None
    out_namespace: Optional[str] = None
    storage: Optional[str] = None           # of the output; None = the input's
    capabilities: tuple[str, ...] = DEFAULT_BAG_CAPABILITIES
    scene_period: float = NODE['scene_period']   # seconds of bag time; 0 = every frame
    depth_scale: float = NODE['depth_scale']
    min_depth: float = NODE['min_depth']
    max_depth: float = NODE['max_depth']
    depth_slop: float = NODE['depth_slop']
    memory: Optional[str] = None                  # SQLite file of a scene memory to fill
    memory_period: float = NODE['memory_period']
    memory_change: float = NODE['memory_change']

    def checked(self) -> 'BagSettings':
        """Return self; InputError naming the first setting out of range."""
        unknown = [name for name in self.capabilities if name not in BAG_CAPABILITIES]
        if unknown or not self.capabilities:
            raise InputError('capabilities of a bag run: one or more of '
                             f"{', '.join(BAG_CAPABILITIES)}, got {', '.join(unknown) or 'none'}")
        if self.scene_period < 0 or self.depth_slop < 0 or self.depth_scale <= 0:
            raise InputError('scene_period and depth_slop must be >= 0, depth_scale > 0')
        if self.min_depth >= self.max_depth:
            raise InputError(f'min_depth ({self.min_depth:g}) must be below max_depth '
                             f'({self.max_depth:g})')
        return self
