"""FairLock: reentrant, and granted to waiting threads in the order they asked."""

import threading
import time

import pytest

from vlm_perception.core.scheduling import FairLock


def test_waiters_are_served_first_come_first_served() -> None:
    lock = FairLock()
    order = []
    lock.acquire()
    threads = []
    for index in range(5):
        def take(i: int = index) -> None:
            with lock:
                order.append(i)

        thread = threading.Thread(target=take)
        thread.start()
        threads.append(thread)
        while len(lock._waiting) < index + 1:  # each is queued before the next starts
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(timeout=5.0)
    assert order == [0, 1, 2, 3, 4]


def test_a_thread_releasing_and_reacquiring_goes_behind_a_waiter() -> None:
    lock = FairLock()
    turns = [0]
    stop = threading.Event()

    def greedy() -> None:  # a worker answering a long queue of questions
        while not stop.is_set():
            with lock:
                turns[0] += 1
                time.sleep(0.002)

    worker = threading.Thread(target=greedy)
    worker.start()
    try:
        waits = []
        for _ in range(20):  # a query, again and again
            time.sleep(0.005)
            before = turns[0]
            with lock:
                waits.append(turns[0] - before)
    finally:
        stop.set()
        worker.join(timeout=5.0)
    assert max(waits) <= 1, waits  # behind at most the turn in hand


def test_reentrant_and_only_the_owner_releases() -> None:
    lock = FairLock()
    with lock:
        with lock:  # the engine's describe() calls detect() under the same lock
            pass
        errors = []
        thread = threading.Thread(target=lambda: errors.append(pytest.raises(
            RuntimeError, lock.release)))
        thread.start()
        thread.join()
        assert errors
    assert lock.acquire() and lock.release() is None
