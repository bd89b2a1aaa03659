"""Frame flow of the node without ROS: newest-frame slot, rate limit and image age."""

import math
import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import image_size, RGBImage

Item = TypeVar('Item')
FUTURE_TOLERANCE_S = 0.5  # clocks of camera and node may differ this much


class LatestSlot(Generic[Item]):
    """Hold only the newest item; putting over an item nobody took counts as one drop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: Optional[Item] = None

    def put(self, item: Item) -> bool:
        """Store item; return True when it replaced an item that was never taken."""
        with self._lock:
            replaced = self._item is not None
            self._item = item
        return replaced

    def take(self) -> Optional[Item]:
        """Remove and return the newest item, or None when empty."""
        with self._lock:
            item, self._item = self._item, None
        return item


class RateLimiter:
    """Space events at least 1 / max_rate seconds apart; max_rate 0 means no limit."""

    def __init__(self, max_rate: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rate = max_rate
        self._clock = clock
        self._last: Optional[float] = None

    def wait_time(self) -> float:
        """Seconds to wait before the next event is allowed (0 when allowed now)."""
        if self.max_rate <= 0 or self._last is None:
            return 0.0
        return max(0.0, self._last + 1.0 / self.max_rate - self._clock())

    def mark(self) -> None:
        """Record that an event happens now."""
        self._last = self._clock()


class Periodic:
    """Tell when a periodic job (the scene refresh) is due; period 0 means every time."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._last: Optional[float] = None

    def due(self) -> bool:
        """Whether the job should run now."""
        return self._last is None or self._clock() - self._last >= self.period

    def mark(self) -> None:
        """Record that the job ran now."""
        self._last = self._clock()


def image_age(now_ns: int, stamp_ns: int) -> float:
    """Age in seconds of an image stamped stamp_ns at time now_ns (negative: from the future)."""
    return (now_ns - stamp_ns) / 1e9


def age_verdict(now_ns: int, stamp_ns: int, max_age: float) -> str:
    """
    Return '' when an image stamped stamp_ns passes a max_age limit at now_ns, else why not.

    'stale' when older than max_age; 'future' when stamped more than FUTURE_TOLERANCE_S ahead
    of the clock (such an image fails every limit). max_age 0 = any age; while the clock reads
    0 (sim time before /clock) ages are not checked.
    """
    if max_age == 0 or now_ns == 0:
        return ''
    age = image_age(now_ns, stamp_ns)
    if age < -FUTURE_TOLERANCE_S:
        return 'future'
    return 'stale' if age > max_age else ''


def check_max_age(max_age: float) -> float:
    """Return a request's max_age, or InputError unless it is finite and not negative."""
    if not math.isfinite(max_age) or max_age < 0:
        raise InputError(f'max_age must be a finite number of seconds >= 0 (0 = any age), '
                         f'got {max_age!r}')
    return max_age


class SourceFrame:
    """
    A received image: its header (kept opaque), stamp, pixels and engine frame.

    The pixels are made by convert() once, when first asked for: a compressed frame that a newer
    one supersedes before anyone takes it is never decoded. They are an (H, W, 3) uint8 array,
    or a 3xHxW uint8 tensor on the models' GPU for a JPEG decoded there (the engine frame's
    ``image`` copies that to the host once, for those who draw or store it). A conversion
    failure goes to on_error once; the frame then has no pixels. The engine frame (which caches
    model encodings) is made once too, so the stream and a query about the same image share it.
    """

    def __init__(self, header: Any, stamp_ns: int, convert: Callable[[], RGBImage],
                 on_error: Callable[[InputError], None] = lambda error: None) -> None:
        """Keep the message's header and stamp, and how to make its pixels."""
        self.header = header
        self.stamp_ns = stamp_ns
        self._convert: Optional[Callable[[], RGBImage]] = convert
        self._on_error = on_error
        self._pixels: Optional[RGBImage] = None
        self._engine_frame: Any = None
        self._lock = threading.Lock()

    def decoded(self) -> bool:
        """Make the pixels if not tried yet; return whether the frame has them."""
        with self._lock:
            if self._convert is not None:
                convert, self._convert = self._convert, None  # frees the message after it
                try:
                    self._pixels = convert()
                except InputError as error:
                    self._on_error(error)
            return self._pixels is not None

    def _checked_pixels(self) -> RGBImage:
        if not self.decoded():
            raise InputError('the image could not be converted (counted as rejected)')
        return self._pixels

    @property
    def size(self) -> tuple[int, int]:
        """Return (height, width); InputError when the pixels could not be made."""
        return image_size(self._checked_pixels())

    def engine_frame(self, make: Callable[[RGBImage], Any]) -> Any:
        """Return the engine frame of this image, making it with make(pixels) the first time."""
        pixels = self._checked_pixels()
        with self._lock:
            if self._engine_frame is None:
                self._engine_frame = make(pixels)
            return self._engine_frame
