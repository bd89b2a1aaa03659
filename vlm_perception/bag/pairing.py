"""
Images held back until their depth image is read: a recording logs depth after its image.

An image is released, in the order read, once a depth image stamped at or after it has been
read (the nearest one within the slop is then known, stamps rising), once the bag has moved
HOLD_S of log time past it (its depth image was lost), or at the end. Without depth every
image is released at once. Released images pair with the depth image nearest in stamp within
the slop, as the node pairs them.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from vlm_perception.core.depth import DepthImage, StampedBuffer

HOLD_S = 1.0           # log time an image waits for its depth image at most
MAX_HELD = 256         # images held at most (a bag whose depth stopped)
DEPTH_SPAN_S = 2.0     # depth images kept: this far back from the newest stamp
MAX_DEPTH_IMAGES = 240


@dataclass
class HeldImage:
    """An image read from the bag, not decoded: its log time, header stamp, header, message."""

    log_ns: int
    stamp_ns: int
    header: Any
    message: Any


class DepthPairing:
    """Hold images until their depth image is known; pair them with it."""

    def __init__(self, use_depth: bool, slop_s: float) -> None:
        """Pair within slop_s seconds of stamp; without use_depth images pass straight on."""
        self.use_depth = use_depth
        self.slop_s = slop_s
        self._held: deque[HeldImage] = deque()
        self._depth: StampedBuffer[DepthImage] = StampedBuffer(DEPTH_SPAN_S, MAX_DEPTH_IMAGES)
        self._newest_depth_ns: Optional[int] = None

    @property
    def oldest_held_ns(self) -> Optional[int]:
        """Return the log time of the oldest image held, or None when none is."""
        return self._held[0].log_ns if self._held else None

    @property
    def held(self) -> int:
        """Return the number of images held."""
        return len(self._held)

    def add_image(self, image: HeldImage) -> list[HeldImage]:
        """Take an image; return the images released, oldest first."""
        self._held.append(image)
        return self._release(image.log_ns)

    def add_depth(self, stamp_ns: int, depth: DepthImage, log_ns: int) -> list[HeldImage]:
        """Keep a depth image; return the images released by it."""
        self._depth.add(stamp_ns, depth)
        if self._newest_depth_ns is None or stamp_ns > self._newest_depth_ns:
            self._newest_depth_ns = stamp_ns
        return self._release(log_ns)

    def advance(self, log_ns: int) -> list[HeldImage]:
        """Note that the bag reached log_ns; return the images that waited long enough."""
        return self._release(log_ns)

    def drain(self) -> list[HeldImage]:
        """Release every image held (the end of the bag)."""
        released = list(self._held)
        self._held.clear()
        return released

    def depth_for(self, image: HeldImage) -> Optional[DepthImage]:
        """Return the depth image nearest in stamp to image's within the slop, or None."""
        return self._depth.nearest(image.stamp_ns, self.slop_s) if self.use_depth else None

    def _release(self, now_ns: int) -> list[HeldImage]:
        released = []
        while self._held and self._ready(self._held[0], now_ns):
            released.append(self._held.popleft())
        return released

    def _ready(self, image: HeldImage, now_ns: int) -> bool:
        if not self.use_depth or len(self._held) > MAX_HELD:
            return True
        if self._newest_depth_ns is not None and self._newest_depth_ns >= image.stamp_ns:
            return True
        return now_ns - image.log_ns >= HOLD_S * 1e9
