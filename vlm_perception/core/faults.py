"""
Injected faults: a test and diagnostic hook, set by an environment variable, never a parameter.

``VLM_PERCEPTION_INJECT_OOM`` makes the engine raise ``torch.OutOfMemoryError`` inside its guarded
regions, so that the real out-of-memory path (conversion to ``OutOfMemory``, trimming the caches,
the caller's counting and warning) runs without filling a GPU::

    VLM_PERCEPTION_INJECT_OOM=call:3         the 3rd, 6th, 9th ... model call fails
    VLM_PERCEPTION_INJECT_OOM=load:1         every model load fails
    VLM_PERCEPTION_INJECT_OOM=call:2,load:1  both

A model call is one guarded run of a model (a detect, tags, crop classification, answer or caption,
warm-ups included); its fault is raised at the end of the call, after the model ran, so that there
are encodings and text embeddings to trim. A load is the creation of one backend (first use,
``load`` or ``replace_model``); its fault is raised before the model is read. Each engine reads the
variable once, when it is constructed, and counts its own calls and loads (thread-safe); unset or
empty means no fault. A malformed value is an InputError at construction.
"""

import os
import threading
from typing import Mapping

from vlm_perception.core.errors import InputError

INJECT_OOM_ENV = 'VLM_PERCEPTION_INJECT_OOM'
ACCEPTED_FORM = ('call:N, load:N or both (call:N,load:M), N a positive integer: every Nth model '
                 'call or load raises out of memory')
KINDS = ('call', 'load')


def parse_inject_oom(value: str | None) -> dict[str, int]:
    """Parse a VLM_PERCEPTION_INJECT_OOM value into {'call': N, 'load': M}; 0 means never."""
    every = dict.fromkeys(KINDS, 0)
    text = (value or '').strip()
    if not text:
        return every
    seen = set()
    for item in text.split(','):
        kind, colon, count = (part.strip() for part in item.strip().partition(':'))
        if kind not in KINDS or not colon or kind in seen or not count.isdigit() \
                or int(count) < 1:
            raise InputError(f'{INJECT_OOM_ENV}={value!r} is not valid: expected {ACCEPTED_FORM}')
        seen.add(kind)
        every[kind] = int(count)
    return every


class FaultInjector:
    """Counts model calls and loads; raises torch.OutOfMemoryError on the scheduled ones."""

    def __init__(self, every_call: int = 0, every_load: int = 0) -> None:
        """Fail every ``every_call``-th call and ``every_load``-th load (0: never)."""
        self.every = {'call': every_call, 'load': every_load}
        self.counts = dict.fromkeys(KINDS, 0)
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> 'FaultInjector':
        """Read VLM_PERCEPTION_INJECT_OOM (InputError when malformed)."""
        every = parse_inject_oom((os.environ if environ is None else environ).get(INJECT_OOM_ENV))
        return cls(every['call'], every['load'])

    @property
    def active(self) -> bool:
        """Whether any fault is scheduled."""
        return any(self.every.values())

    def call(self) -> None:
        """Count one model call; raise torch.OutOfMemoryError when it is a scheduled one."""
        self._tick('call')

    def load(self) -> None:
        """Count one model load; raise torch.OutOfMemoryError when it is a scheduled one."""
        self._tick('load')

    def _tick(self, kind: str) -> None:
        every = self.every[kind]
        if not every:
            return
        with self._lock:
            self.counts[kind] += 1
            count = self.counts[kind]
        if count % every == 0:
            import torch

            raise torch.OutOfMemoryError(
                f'CUDA out of memory (injected by {INJECT_OOM_ENV}: {kind} {count}, every '
                f'{every})')
