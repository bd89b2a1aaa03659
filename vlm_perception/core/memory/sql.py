"""
What the SQLite and PostgreSQL stores share: rows, eviction and recall's scoring.

Tables (both engines):
- memory_meta (key, value): schema_version.
- memory_scenes: id, stamp_ns, frame_id, source, caption, tags (JSON), detections (JSON),
  tagger_model_id, embedding_dim (0 = none), embedding (float32 bytes), thumbnail (JPEG),
  bytes (the payload the byte bound counts).
- memory_labels (scene_id, label): the normalised detection labels, for exact label matches.
Queries are written with ``?`` placeholders; the PostgreSQL store turns them into ``%s``.
"""

import contextlib
from typing import Any, Iterator

import numpy as np

from vlm_perception.core.errors import InputError
from vlm_perception.core.memory.entries import (checked_embedding, detections_from_json,
                                                detections_to_json, MemoryEntry, MemoryMatch,
                                                normalise_label, tags_to_json)
from vlm_perception.core.memory.store import (DEFAULT_RESULTS, MemoryStoreError,
                                              SCHEMA_VERSION)

# Rows fetched at a time by the exact scan: memory stays bounded whatever the store holds.
_SCAN_ROWS = 1024
# Ids per IN (...) list: below SQLite's and PostgreSQL's parameter limits.
_IDS_PER_QUERY = 500
_EVICTABLE = ('SELECT id FROM (SELECT id, ROW_NUMBER() OVER w AS rn, SUM(bytes) OVER w AS cum '
              'FROM memory_scenes WINDOW w AS (ORDER BY stamp_ns DESC, id DESC)) AS ranked '
              'WHERE rn > ? OR cum > ?')


def entry_bytes(entry: MemoryEntry, tags: str, detections: str) -> int:
    """Return the payload an entry stores: its texts, JSON, embedding and thumbnail."""
    texts = (entry.frame_id, entry.source, entry.caption, entry.tagger_model_id, tags,
             detections)
    embedding = 0 if entry.embedding is None else entry.embedding.nbytes
    return sum(len(text.encode()) for text in texts) + embedding + len(entry.thumbnail_jpeg)


class SqlSceneStore:
    """
    A SceneStore over a SQL database; subclasses give connections and engine quirks.

    Subclasses provide ``_writing()`` and ``_reading()``: context managers yielding a cursor in
    a transaction on the write or the read connection, each under its own lock.
    """

    description = ''

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        """Bound the store to ``max_entries`` entries and ``max_bytes`` payload bytes."""
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    # --- engine hooks

    def _sql(self, query: str) -> str:
        return query

    def _writing(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _lock_writers(self, cursor: Any) -> None:
        """Serialise put + evict across processes where the engine does not already."""

    def _insert_scene(self, cursor: Any, row: tuple, embedding: np.ndarray | None) -> int:
        raise NotImplementedError

    def _check_schema_version(self, cursor: Any) -> None:
        cursor.execute(self._sql('SELECT value FROM memory_meta WHERE key = ?'),
                       ('schema_version',))
        found = cursor.fetchone()
        if found is None:
            cursor.execute(self._sql('INSERT INTO memory_meta (key, value) VALUES (?, ?)'),
                           ('schema_version', str(SCHEMA_VERSION)))
        elif found[0] != str(SCHEMA_VERSION):
            raise MemoryStoreError(
                f'{self.description} holds scene memory schema version {found[0]}, this '
                f'vlm_perception reads version {SCHEMA_VERSION}: use another memory_path / '
                'memory_url, or move that one aside')

    # --- writing

    def put(self, entry: MemoryEntry) -> int:
        """Store an entry, evict the oldest beyond the bounds, return the entry's id."""
        tags = tags_to_json(entry.tags)
        detections = detections_to_json(entry.detections)
        size = entry_bytes(entry, tags, detections)
        if size > self.max_bytes:
            # Kept, it would evict every other entry and then itself.
            raise InputError(f'a memory entry of {size} bytes exceeds memory_max_bytes '
                             f'({self.max_bytes})')
        embedding = entry.embedding
        row = (entry.stamp_ns, entry.frame_id, entry.source, entry.caption, tags, detections,
               entry.tagger_model_id if embedding is not None else '',
               0 if embedding is None else int(embedding.size),
               None if embedding is None else embedding.astype('<f4').tobytes(),
               entry.thumbnail_jpeg, size)
        with self._writing() as cursor:
            self._lock_writers(cursor)
            scene_id = self._insert_scene(cursor, row, embedding)
            cursor.executemany(
                self._sql('INSERT INTO memory_labels (scene_id, label) VALUES (?, ?)'),
                [(scene_id, label) for label in sorted(entry.labels)])
            self._evict(cursor)
        return scene_id

    def _evict(self, cursor: Any) -> None:
        cursor.execute('SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM memory_scenes')
        count, total = cursor.fetchone()
        if count <= self.max_entries and total <= self.max_bytes:
            return
        # Newest first, an entry goes once the entries or bytes up to it pass a bound.
        cursor.execute(self._sql(f'DELETE FROM memory_scenes WHERE id IN ({_EVICTABLE})'),
                       (self.max_entries, self.max_bytes))

    # --- reading

    def count(self) -> int:
        """Return the number of entries."""
        with self._reading() as cursor:
            cursor.execute('SELECT COUNT(*) FROM memory_scenes')
            return int(cursor.fetchone()[0])

    def total_bytes(self) -> int:
        """Return the payload bytes of all entries, as the byte bound counts them."""
        with self._reading() as cursor:
            cursor.execute('SELECT COALESCE(SUM(bytes), 0) FROM memory_scenes')
            return int(cursor.fetchone()[0])

    def recall(self, query_text: str, query_embedding: np.ndarray | None = None,
               tagger_model_id: str = '', max_results: int = 0, since_ns: int = 0,
               until_ns: int = 0, source: str = '',
               thumbnails: bool = False) -> list[MemoryMatch]:
        """
        Return the scenes that best match a query, best first, ties most recent first.

        score = 1.0 where a stored detection's label equals the query text (both normalised:
        lower case, whitespace collapsed), else (cos + 1) / 2 of ``query_embedding`` (the
        query text as ``tagger_model_id`` embeds it) and the scene's embedding; only scenes
        embedded by that model, at that size, are compared. Without a query embedding, label
        matches only. max_results 0 = 10; since_ns / until_ns 0 = unbounded (both inclusive);
        source '' = every source. Thumbnails are read only when asked for.
        """
        if max_results < 0:
            raise InputError(f'max_results must be >= 0 (0 = {DEFAULT_RESULTS}), got '
                             f'{max_results}')
        if since_ns < 0 or until_ns < 0:
            raise InputError('since and until must be >= 0 (0 = unbounded)')
        limit = max_results or DEFAULT_RESULTS
        label = normalise_label(query_text)
        if query_embedding is not None:
            query_embedding = checked_embedding(query_embedding, 'the query embedding')
        where, params = self._filters(since_ns, until_ns, source)
        with self._reading() as cursor:
            scored: dict[int, tuple[float, int]] = {}
            if label:
                cursor.execute(self._sql(
                    'SELECT s.id, s.stamp_ns FROM memory_scenes s JOIN memory_labels l '
                    f'ON l.scene_id = s.id WHERE l.label = ?{where} '
                    'ORDER BY s.stamp_ns DESC, s.id DESC LIMIT ?'), (label, *params, limit))
                scored.update((scene_id, (1.0, stamp)) for scene_id, stamp in cursor.fetchall())
            if query_embedding is not None and tagger_model_id:
                # Any entry of the final top-k is in the label top-k or the embedding top-k.
                for scene_id, stamp, score in self._embedding_candidates(
                        cursor, query_embedding, tagger_model_id, where, params, limit):
                    scored.setdefault(scene_id, (score, stamp))
            best = sorted(scored.items(), key=lambda item: (-item[1][0], -item[1][1], -item[0]))
            best = best[:limit]
            rows = self._details(cursor, [scene_id for scene_id, _ in best], thumbnails)
        matches = []
        for scene_id, (score, _) in best:
            row = rows.get(scene_id)
            if row is None:
                continue  # evicted between the two queries
            stamp, frame_id, entry_source, caption, detections, thumbnail = row
            matches.append(MemoryMatch(
                int(stamp), frame_id, entry_source, score, caption,
                [item for item in detections_from_json(detections)
                 if normalise_label(item.label) == label],
                bytes(thumbnail) if thumbnails and thumbnail is not None else b''))
        return matches

    @staticmethod
    def _filters(since_ns: int, until_ns: int, source: str) -> tuple[str, list[Any]]:
        """Return ' AND ...' conditions on memory_scenes (as s) and their parameters."""
        where, params = '', []
        if since_ns:
            where, params = where + ' AND s.stamp_ns >= ?', params + [since_ns]
        if until_ns:
            where, params = where + ' AND s.stamp_ns <= ?', params + [until_ns]
        if source:
            where, params = where + ' AND s.source = ?', params + [source]
        return where, params

    def _embedding_candidates(self, cursor: Any, query: np.ndarray, tagger_model_id: str,
                              where: str, params: list[Any],
                              limit: int) -> Iterator[tuple[int, int, float]]:
        """Yield (id, stamp_ns, score) of the ``limit`` best scenes by embedding: exact scan."""
        cursor.execute(self._sql(
            'SELECT s.id, s.stamp_ns, s.embedding FROM memory_scenes s '
            f'WHERE s.tagger_model_id = ? AND s.embedding_dim = ?{where}'),
            (tagger_model_id, int(query.size), *params))
        unit = query / max(float(np.linalg.norm(query)), 1e-12)
        ids, stamps, scores = [], [], []
        while rows := cursor.fetchmany(_SCAN_ROWS):
            vectors = np.stack([np.frombuffer(row[2], dtype='<f4') for row in rows])  # (N, D)
            norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
            scores.append((vectors @ unit) / norms)
            ids.extend(row[0] for row in rows)
            stamps.extend(row[1] for row in rows)
        if not ids:
            return
        # Clipped before sorting: rounding past 1.0 must not outrank an exact tie.
        score = np.clip((np.concatenate(scores).astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
        id_array, stamp_array = np.array(ids, dtype=np.int64), np.array(stamps, dtype=np.int64)
        order = np.lexsort((-id_array, -stamp_array, -score))[:limit]  # last key sorts first
        for index in order:
            yield int(id_array[index]), int(stamp_array[index]), float(score[index])

    def _details(self, cursor: Any, ids: list[int],
                 thumbnails: bool) -> dict[int, tuple]:
        thumbnail = 'thumbnail' if thumbnails else 'NULL'
        rows: dict[int, tuple] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start:start + _IDS_PER_QUERY]
            cursor.execute(self._sql(
                'SELECT id, stamp_ns, frame_id, source, caption, detections, '
                f'{thumbnail} FROM memory_scenes '
                f'WHERE id IN ({", ".join("?" * len(chunk))})'), chunk)
            rows.update((row[0], tuple(row[1:])) for row in cursor.fetchall())
        return rows
