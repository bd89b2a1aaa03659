"""The write path off the stream: a bounded queue drained into the store by its own thread."""

import collections
import threading
import time

from vlm_perception.core.memory.entries import MemoryEntry
from vlm_perception.core.memory.store import SceneStore

DEFAULT_QUEUE = 64


class MemoryWriter:
    """
    Write entries into a store on a thread of its own; ``submit`` never blocks.

    An entry submitted while ``queue_size`` wait is dropped and counted (``dropped``), as are
    those still waiting when ``close`` runs out of time. A failed write is counted in
    ``failed`` with its message in ``last_error``; the thread goes on with the next entry.
    """

    def __init__(self, store: SceneStore, queue_size: int = DEFAULT_QUEUE,
                 name: str = 'vlm_perception memory writer') -> None:
        """Start the thread writing into ``store``."""
        if queue_size < 1:
            raise ValueError(f'memory_queue must be >= 1, got {queue_size}')
        self.store = store
        self.queue_size = queue_size
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self.last_error = ''
        self._pending: collections.deque[MemoryEntry] = collections.deque()
        self._condition = threading.Condition()
        self._busy = False
        self._closing = False
        # Daemon: a write stuck past close must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Return the number of entries waiting or being written."""
        with self._condition:
            return len(self._pending) + self._busy

    def submit(self, entry: MemoryEntry) -> bool:
        """Queue an entry; return False (and count it dropped) when full or closed."""
        with self._condition:
            if self._closing or len(self._pending) >= self.queue_size:
                self.dropped += 1
                return False
            self._pending.append(entry)
            self._condition.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written (or failed); False if time ran out."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._pending and not self._busy,
                                            timeout)

    def close(self, timeout: float = 2.0) -> int:
        """
        Write what is queued for at most ``timeout`` s, then drop the rest; return how many.

        Submitting after close drops. A write still in progress at the deadline finishes on
        its own (it is counted written or failed then); the store is the caller's to close.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._condition:
            rest = len(self._pending)
            self._pending.clear()
            self.dropped += rest
            self._condition.notify_all()
        return rest

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return  # closing, and nothing left
                entry = self._pending.popleft()
                self._busy = True
            try:
                self.store.put(entry)
                ok, error = True, ''
            except Exception as exc:  # noqa: B902 (any store error: count it, keep writing)
                ok, error = False, f'{type(exc).__name__}: {exc}'
            with self._condition:
                self._busy = False
                if ok:
                    self.written += 1
                else:
                    self.failed += 1
                    self.last_error = error
                self._condition.notify_all()
