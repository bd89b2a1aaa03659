"""Counters behind the node's /diagnostics: rates, drops by cause, latency per capability."""

from collections import Counter, deque
from dataclasses import dataclass
import threading
import time
from typing import Callable

OK, WARN, ERROR = 'OK', 'WARN', 'ERROR'
LATENCY_SMOOTHING = 0.2  # weight of the newest latency in the running mean
NO_DEPTH_WARN_S = 2.0    # with depth on, WARN when none arrived for this long
STARVED_ERROR_FACTOR = 3  # no image for this many image_timeouts is an ERROR


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def tick(self) -> None:
        """Record one event now."""
        self._times.append(self._clock())
        self._trim()

    def rate(self) -> float:
        """Events per second in the last window."""
        self._trim()
        return len(self._times) / self.window

    def _trim(self) -> None:
        oldest = self._clock() - self.window
        while self._times and self._times[0] < oldest:
            self._times.popleft()


class Throttle:
    """Allow one event per key every period seconds (per-cause throttled warnings)."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Whether an event of key may pass now (and if so, start its period)."""
        with self._lock:
            now = self._clock()
            if now - self._last.get(key, -float('inf')) < self.period:
                return False
            self._last[key] = now
            return True


@dataclass
class Latency:
    """Latency of one capability: last value and exponential mean, seconds."""

    last: float = 0.0
    mean: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        """Add one measurement."""
        first = self.count == 0
        self.mean = seconds if first else ((1 - LATENCY_SMOOTHING) * self.mean
                                           + LATENCY_SMOOTHING * seconds)
        self.last = seconds
        self.count += 1


@dataclass
class DiagnosticReport:
    """One status for /diagnostics: level (OK, WARN, ERROR), message and key values."""

    level: str
    message: str
    values: dict[str, str]


class PerceptionStats:
    """
    Thread-safe counters the node updates from its callbacks and reports once a second.

    With several cameras each has its own counters, which take device and model state from the
    node's (``shared``); the node's then count requests only (``stream`` false: no rates).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 shared: 'PerceptionStats | None' = None, stream: bool = True) -> None:
        self._lock = threading.Lock()
        self._shared = shared
        self._stream = stream
        self.received = RateMeter(clock=clock)
        self.processed = RateMeter(clock=clock)
        self.dropped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, Latency] = {}
        self._device = ''
        self._model_state = 'loading'
        self._reported_problems = 0
        self._clock = clock
        self._image_since: float | None = None  # the last image, or when expected from
        self.image_timeout = 0.0     # seconds; 0 = never starved
        self._depth_since: float | None = None  # set when depth is expected: last one, or start

    @property
    def device(self) -> str:
        """Return the device the models run on ('' before they load)."""
        return self._shared.device if self._shared is not None else self._device

    @device.setter
    def device(self, device: str) -> None:
        self._device = device

    @property
    def model_state(self) -> str:
        """Return the state of the models: loading, ready, failed: why, ..."""
        return self._shared.model_state if self._shared is not None else self._model_state

    @model_state.setter
    def model_state(self, state: str) -> None:
        self._model_state = state

    def expect_depth(self, expected: bool = True) -> None:
        """Depth images are expected from now on (WARN while none arrives), or no longer."""
        with self._lock:
            self._depth_since = self._clock() if expected else None

    def record_depth(self) -> None:
        """Count one accepted depth image."""
        with self._lock:
            self._depth_since = self._clock()

    def expect_images(self, expected: bool = True) -> None:
        """Images are expected from now on (image_timeout counts from here), or no longer."""
        with self._lock:
            self._image_since = self._clock() if expected else None

    def starved_for(self) -> float | None:
        """Seconds without an expected image, once that is image_timeout or more; else None."""
        with self._lock:
            if self._image_since is None:
                return None
            waited = self._clock() - self._image_since
        return waited if 0 < self.image_timeout <= waited else None

    def record_received(self) -> None:
        """Count one input image."""
        with self._lock:
            self.received.tick()
            self._image_since = self._clock()

    def record_processed(self) -> None:
        """Count one image that went through inference."""
        with self._lock:
            self.processed.tick()

    def record_drop(self, cause: str) -> None:
        """Count one valid image not processed (superseded, stale, ...)."""
        with self._lock:
            self.dropped[cause] += 1

    def record_rejected(self, cause: str) -> None:
        """Count one bad input (image, question, label list) by cause."""
        with self._lock:
            self.rejected[cause] += 1

    def record_error(self, where: str) -> None:
        """Count one unexpected exception caught in a callback."""
        with self._lock:
            self.errors[where] += 1

    def record_latency(self, capability: str, seconds: float) -> None:
        """Add one inference time of a capability."""
        with self._lock:
            self.latency.setdefault(capability, Latency()).add(seconds)

    def report(self) -> DiagnosticReport:
        """Summarise the counters; WARN when bad input or errors arrived since the last report."""
        with self._lock:
            values = {
                'input rate (Hz)': f'{self.received.rate():.2f}',
                'processed rate (Hz)': f'{self.processed.rate():.2f}',
            } if self._stream else {}
            values.update({'device': self.device, 'model state': self.model_state})
            values.update({f'dropped: {cause}': str(n)
                           for cause, n in sorted(self.dropped.items())})
            values.update({f'rejected: {cause}': str(n)
                           for cause, n in sorted(self.rejected.items())})
            values.update({f'errors: {where}': str(n) for where, n in sorted(self.errors.items())})
            for capability, latency in sorted(self.latency.items()):
                values[f'latency {capability} (ms)'] = (
                    f'last {latency.last * 1e3:.1f}, mean {latency.mean * 1e3:.1f}')
            problems = sum(self.rejected.values()) + sum(self.errors.values())
            new_problems, self._reported_problems = (problems - self._reported_problems,
                                                     problems)
            no_depth_s = (None if self._depth_since is None
                          else self._clock() - self._depth_since)
        level, message = self._level(new_problems, no_depth_s, self.starved_for())
        return DiagnosticReport(level, message, values)

    def _level(self, new_problems: int, no_depth_s: float | None,
               starved_s: float | None) -> tuple[str, str]:
        if self.model_state.startswith('failed'):
            return ERROR, self.model_state
        if self.model_state != 'ready':
            return WARN, f'models {self.model_state}'
        if starved_s is not None:
            level = ERROR if starved_s >= STARVED_ERROR_FACTOR * self.image_timeout else WARN
            return level, f'no image for {starved_s:.0f} s'
        if no_depth_s is not None and no_depth_s >= NO_DEPTH_WARN_S:
            return WARN, f'no depth for {no_depth_s:.0f} s'
        if new_problems:
            return WARN, f'{new_problems} bad inputs or errors since the last report'
        return OK, 'running'
