"""A first-come, first-served lock: threads sharing the engine take turns in arrival order."""

from collections import deque
import threading
from typing import Optional


class FairLock:
    """
    A reentrant lock granted in the order threads asked for it.

    threading.RLock lets a thread that releases and at once re-acquires it (a worker answering
    a queue of questions) win again and again over a waiting one (a query, the stream); here the
    waiter is served next, so each waits behind at most the holder and those before it.
    """

    def __init__(self) -> None:
        """Make an unheld lock."""
        self._condition = threading.Condition(threading.Lock())
        self._waiting: deque[int] = deque()  # thread ids, first come first
        self._owner: Optional[int] = None
        self._depth = 0

    def acquire(self) -> bool:
        """Wait for this thread's turn (at once if it holds the lock already)."""
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            self._waiting.append(me)
            while self._owner is not None or self._waiting[0] != me:
                self._condition.wait()
            self._waiting.popleft()
            self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        """Give the lock up (to the longest waiting thread once fully released)."""
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError('cannot release a FairLock this thread does not hold')
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    def __enter__(self) -> 'FairLock':
        """Acquire, for use in a with statement."""
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Release at the end of the with statement."""
        self.release()
