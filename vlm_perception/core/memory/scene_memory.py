"""The scene memory as the node uses it: parameters, change policy, writer, store and recall."""

from dataclasses import dataclass
import time

import numpy as np

from vlm_perception.core.errors import InputError
from vlm_perception.core.memory.entries import MemoryEntry, MemoryMatch, thumbnail
from vlm_perception.core.memory.policy import ChangePolicy
from vlm_perception.core.memory.store import (DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES,
                                              open_store)
from vlm_perception.core.memory.writer import DEFAULT_QUEUE, MemoryWriter


@dataclass
class MemoryConfig:
    """The node's memory_* parameters (memory_period in s, memory_change a cosine distance)."""

    path: str = ''
    url: str = ''
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES
    period_s: float = 30.0
    change: float = 0.1
    queue: int = DEFAULT_QUEUE

    def validate(self) -> None:
        """Raise InputError naming the first parameter out of range."""
        if self.path and self.url:
            raise InputError('set memory_path (SQLite file) or memory_url (PostgreSQL), '
                             'not both')
        checks = (('memory_max_entries', self.max_entries >= 1, '>= 1'),
                  ('memory_max_bytes', self.max_bytes >= 1, '>= 1'),
                  ('memory_period', self.period_s >= 0.0, '>= 0 s'),
                  ('memory_change', 0.0 <= self.change <= 2.0, 'in 0..2 (a cosine distance)'),
                  ('memory_queue', self.queue >= 1, '>= 1'))
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f'{name} must be {expected}')


class SceneMemory:
    """
    Remember processed scenes and recall them; ``offer`` is cheap enough for the stream.

    One change policy per source (camera); kept scenes go through the writer's bounded queue;
    recall reads on the store's read connection, beside the writes.
    """

    def __init__(self, config: MemoryConfig) -> None:
        """Open the store the config names and start the writer."""
        config.validate()
        self.config = config
        self.store = open_store(config.path, config.url, config.max_entries, config.max_bytes)
        self.writer = MemoryWriter(self.store, config.queue)
        self._policies: dict[str, ChangePolicy] = {}
        self.offered = 0
        self.kept = 0

    def offer(self, entry: MemoryEntry, rgb: np.ndarray | None = None) -> bool:
        """
        Queue ``entry`` if its source's scene changed or the period elapsed; return whether.

        ``rgb`` (the frame) becomes the entry's thumbnail, encoded only for a kept scene.
        """
        self.offered += 1
        policy = self._policies.get(entry.source)
        if policy is None:
            policy = self._policies[entry.source] = ChangePolicy(self.config.change,
                                                                 self.config.period_s)
        if not policy.consider(entry):
            return False
        self.kept += 1
        if rgb is not None and not entry.thumbnail_jpeg:
            entry.thumbnail_jpeg = thumbnail(rgb)
        return self.writer.submit(entry)

    def recall(self, query_text: str, query_embedding: np.ndarray | None = None,
               tagger_model_id: str = '', max_results: int = 0, since_ns: int = 0,
               until_ns: int = 0, source: str = '',
               thumbnails: bool = False) -> list[MemoryMatch]:
        """Return the best matching scenes, best first (see SqlSceneStore.recall)."""
        return self.store.recall(query_text, query_embedding, tagger_model_id, max_results,
                                 since_ns, until_ns, source, thumbnails)

    def reset(self) -> None:
        """Forget the last kept scenes (after a model swap): the next of each is kept."""
        self._policies.clear()

    def stats(self) -> dict[str, int]:
        """Return counts for diagnostics: offered, kept, written, dropped, failed, pending."""
        return {'offered': self.offered, 'kept': self.kept, 'written': self.writer.written,
                'dropped': self.writer.dropped, 'failed': self.writer.failed,
                'pending': self.writer.pending}

    def close(self, timeout: float = 2.0) -> int:
        """Flush the queue and close the store in ``timeout`` s at most; return entries dropped."""
        deadline = time.monotonic() + timeout
        dropped = self.writer.close(timeout)
        # Only what the flush left of the time goes to a write still in progress: a write
        # stuck behind a lock keeps its connection (it ends with the write), not the caller.
        self.store.close(max(0.0, deadline - time.monotonic()))
        return dropped
