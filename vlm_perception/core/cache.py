"""Text-embedding cache: a label is encoded once per model, not once per frame."""

import collections
import threading
from typing import Any, Callable, Sequence

DEFAULT_CAPACITY = 4096


class TextEmbeddingCache:
    """
    Thread-safe LRU map (model key, variant, text) -> embedding row, filled in batches.

    The variant names how texts become embeddings besides the model (the prompt templates):
    rows of another variant are never reused, and clearing a model key clears all its variants.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """Keep at most ``capacity`` embeddings; the least recently used go first."""
        self.capacity = capacity
        self._rows: collections.OrderedDict[tuple[str, str, str], Any] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return the number of cached embeddings."""
        return len(self._rows)

    def get(self, model_key: str, texts: Sequence[str],
            encode: Callable[[list[str]], Sequence[Any]], variant: str = '') -> list[Any]:
        """
        Return one embedding per text, encoding only the texts not cached, in one call.

        ``encode(texts)`` must return one embedding per text, in order.
        """
        with self._lock:
            missing = [text for text in dict.fromkeys(texts)
                       if (model_key, variant, text) not in self._rows]
        if missing:
            encoded = encode(missing)
            with self._lock:
                for text, row in zip(missing, encoded):
                    self._rows[(model_key, variant, text)] = row
        with self._lock:
            rows = []
            for text in texts:
                key = (model_key, variant, text)
                row = self._rows.get(key)
                if row is None:      # evicted by a concurrent request: encode again
                    row = encode([text])[0]
                    self._rows[key] = row
                self._rows.move_to_end(key)
                rows.append(row)
            while len(self._rows) > max(self.capacity, len(texts)):
                self._rows.popitem(last=False)
        return rows

    def clear(self, model_key: str | None = None) -> None:
        """Forget the embeddings of one model (every variant), or of all."""
        with self._lock:
            for key in [k for k in self._rows if model_key is None or k[0] == model_key]:
                del self._rows[key]

    def model_keys(self) -> set[str]:
        """Return the keys of the models that have embeddings cached."""
        with self._lock:
            return {key[0] for key in self._rows}
