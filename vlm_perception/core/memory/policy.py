"""When a processed scene becomes a memory entry: it changed, or a period went by."""

import numpy as np

from vlm_perception.core.memory.entries import MemoryEntry


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two 1-D vectors; 0.0 where either has no length."""
    norm = float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    return float(np.dot(a, b)) / norm if norm > 0.0 else 0.0


class ChangePolicy:
    """
    Decide whether a new scene is kept, for one camera (one policy per source).

    Kept: the first scene; a scene whose embedding is at a cosine distance >= ``change`` from
    the last kept one's (or whose embedding model, size or presence differs); a scene whose set
    of detected labels differs; or one ``period_s`` or more after the last kept (stamps going
    back, as when a bag loops or simulated time restarts, count as a period elapsed).
    """

    def __init__(self, change: float = 0.1, period_s: float = 30.0) -> None:
        """Keep scenes that moved ``change`` in cosine distance or came ``period_s`` later."""
        if not 0.0 <= change <= 2.0:
            raise ValueError(f'memory_change must be in 0..2 (a cosine distance), got {change}')
        if period_s < 0.0:
            raise ValueError(f'memory_period must be >= 0 s, got {period_s}')
        self.change = change
        self.period_ns = int(period_s * 1e9)
        self._last: MemoryEntry | None = None

    def reset(self) -> None:
        """Forget the last kept scene: the next one is kept."""
        self._last = None

    def consider(self, entry: MemoryEntry) -> bool:
        """Return whether ``entry`` is kept; a kept entry becomes the one compared against."""
        keep = self._changed(entry)
        if keep:
            self._last = entry
        return keep

    def _changed(self, entry: MemoryEntry) -> bool:
        last = self._last
        if last is None:
            return True
        elapsed = entry.stamp_ns - last.stamp_ns
        if elapsed < 0 or elapsed >= self.period_ns:
            return True
        if entry.labels != last.labels:
            return True
        if entry.embedding is None and last.embedding is None:
            return False
        if (entry.embedding is None or last.embedding is None
                or entry.tagger_model_id != last.tagger_model_id
                or entry.embedding.shape != last.embedding.shape):
            return True  # embeddings that cannot be compared: a new model, or tags toggled
        return 1.0 - cosine(entry.embedding, last.embedding) >= self.change
