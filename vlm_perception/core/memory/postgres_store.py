"""
The fleet scene store: one PostgreSQL database that several robots write into.

Embeddings are always kept as float32 bytea; where the server has the pgvector extension when
the tables are created, a ``vector`` column beside them lets the server rank scenes by cosine
distance (exact: no approximate index), else recall scans the embeddings exactly here. The
password comes from PGPASSWORD or a PGPASSFILE, never from memory_url (peers read parameters).
"""

import contextlib
import threading
import time
from typing import Any, Iterator

import numpy as np

from vlm_perception.core.memory.entries import MemoryMatch
from vlm_perception.core.memory.sql import SqlSceneStore
from vlm_perception.core.memory.store import (check_memory_url, DEFAULT_MAX_BYTES,
                                              DEFAULT_MAX_ENTRIES, MemoryStoreError)

# Arbitrary, fixed: every robot serialises schema creation and put + evict on this key.
_LOCK_KEY = 0x766C6D5F6D656D
SCHEMA = (
    'CREATE TABLE IF NOT EXISTS memory_meta (key text PRIMARY KEY, value text NOT NULL)',
    'CREATE TABLE memory_scenes ('
    ' id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stamp_ns bigint NOT NULL,'
    ' frame_id text NOT NULL, source text NOT NULL, caption text NOT NULL,'
    ' tags text NOT NULL, detections text NOT NULL, tagger_model_id text NOT NULL,'
    ' embedding_dim integer NOT NULL, embedding bytea, thumbnail bytea NOT NULL,'
    ' bytes bigint NOT NULL)',
    'CREATE INDEX memory_scenes_stamp ON memory_scenes (stamp_ns, id)',
    'CREATE INDEX memory_scenes_model ON memory_scenes (tagger_model_id, embedding_dim)',
    'CREATE TABLE memory_labels ('
    ' scene_id bigint NOT NULL REFERENCES memory_scenes (id) ON DELETE CASCADE,'
    ' label text NOT NULL, PRIMARY KEY (label, scene_id))',
    'CREATE INDEX memory_labels_scene ON memory_labels (scene_id)',
)
_INSERT = ('INSERT INTO memory_scenes (stamp_ns, frame_id, source, caption, tags, detections,'
           ' tagger_model_id, embedding_dim, embedding, thumbnail, bytes{vector_column})'
           ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{vector_value}) RETURNING id')
_CLOSE_WAIT_S = 2.0


def vector_literal(embedding: np.ndarray) -> str:
    """Return pgvector's text form of an embedding, '[x,y,...]' (float32 round trip)."""
    return '[' + ','.join(repr(float(value)) for value in embedding) + ']'


class PostgresSceneStore(SqlSceneStore):
    """A PostgreSQL scene store: a write and a read connection, each under its own lock."""

    def __init__(self, url: str, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, connect_timeout_s: int = 5,
                 vector: bool = True) -> None:
        """
        Connect to ``url`` (no password in it), creating the tables if they are missing.

        vector False: new tables get no pgvector column even where the server has it (tables
        that have one keep it, and every writer fills it).
        """
        super().__init__(max_entries, max_bytes)
        check_memory_url(url)
        try:
            import psycopg
        except ImportError:
            raise MemoryStoreError("memory_url needs psycopg: pip install 'psycopg[binary]'"
                                   ' (see requirements.txt)') from None
        self._psycopg = psycopg
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._vector = vector
        self._closed = False
        try:
            info = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise MemoryStoreError(f'memory_url cannot be read: {error}') from None
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
        self.description = f"PostgreSQL {where}/{info.get('dbname', '')}"
        self._write_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._write = self._connect()
        try:
            self._read = self._connect()
            self.uses_pgvector = self._create_schema()
        except BaseException:
            self._write.close()
            if hasattr(self, '_read'):
                self._read.close()
            raise
        if self.uses_pgvector:
            self.description += ' (pgvector)'

    def _connect(self) -> Any:
        try:
            # Autocommit: the transactions are the explicit ones below, reads included.
            return self._psycopg.connect(self._url, autocommit=True,
                                         connect_timeout=self._connect_timeout_s,
                                         application_name='vlm_perception scene memory')
        except self._psycopg.Error as error:
            raise MemoryStoreError(f'cannot connect to the memory database {self.description}'
                                   f' ({str(error).strip()}): check memory_url, the server, '
                                   'and PGPASSWORD / PGPASSFILE') from None

    def _create_schema(self) -> bool:
        """Create missing tables (one robot at a time); return whether pgvector ranks."""
        with self._writing() as cursor:
            self._lock_writers(cursor)
            cursor.execute('SELECT to_regclass(%s) IS NOT NULL', ('memory_scenes',))
            exists = cursor.fetchone()[0]
            if not exists:
                for statement in SCHEMA:
                    cursor.execute(statement)
                if self._vector:
                    # Only with new tables: every row of a vector table then has its vector.
                    self._add_vector_column(cursor)
            self._check_schema_version(cursor)
            cursor.execute('SELECT 1 FROM information_schema.columns WHERE table_name = %s'
                           ' AND column_name = %s AND table_schema = current_schema()',
                           ('memory_scenes', 'embedding_vec'))
            return cursor.fetchone() is not None

    def _add_vector_column(self, cursor: Any) -> None:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        if cursor.fetchone() is None:
            return
        try:
            with cursor.connection.transaction():  # a savepoint: a refusal keeps the tables
                cursor.execute('CREATE EXTENSION IF NOT EXISTS vector')
                cursor.execute('ALTER TABLE memory_scenes ADD COLUMN embedding_vec vector')
        except self._psycopg.Error:
            pass  # not allowed to create the extension here: the exact scan serves

    def _sql(self, query: str) -> str:
        return query.replace('?', '%s')

    @contextlib.contextmanager
    def _transaction(self, role: str, lock: threading.Lock) -> Iterator[Any]:
        with lock:
            if self._closed:
                raise MemoryStoreError(f'{self.description}: the scene store is closed')
            connection = getattr(self, role)
            if connection.closed or connection.broken:
                # The server restarted or the network dropped: the next call reconnects.
                connection = self._connect()
                setattr(self, role, connection)
            with connection.transaction(), connection.cursor() as cursor:
                yield cursor

    def _writing(self) -> contextlib.AbstractContextManager[Any]:
        return self._transaction('_write', self._write_lock)

    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        return self._transaction('_read', self._read_lock)

    def _lock_writers(self, cursor: Any) -> None:
        # Robots evicting at once would each count the other's rows before deleting.
        cursor.execute('SELECT pg_advisory_xact_lock(%s)', (_LOCK_KEY,))

    def _insert_scene(self, cursor: Any, row: tuple, embedding: np.ndarray | None) -> int:
        if self.uses_pgvector:
            query = _INSERT.format(vector_column=', embedding_vec',
                                   vector_value=', ?::vector')
            row = (*row, None if embedding is None else vector_literal(embedding))
        else:
            query = _INSERT.format(vector_column='', vector_value='')
        cursor.execute(self._sql(query), row)
        return int(cursor.fetchone()[0])

    def _embedding_candidates(self, cursor: Any, query: np.ndarray, tagger_model_id: str,
                              where: str, params: list[Any],
                              limit: int) -> Iterator[tuple[int, int, float]]:
        if not self.uses_pgvector:
            yield from super()._embedding_candidates(cursor, query, tagger_model_id, where,
                                                     params, limit)
            return
        vector = vector_literal(query)
        cursor.execute(self._sql(
            'SELECT s.id, s.stamp_ns, 1 - (s.embedding_vec <=> ?::vector) FROM memory_scenes s'
            ' WHERE s.tagger_model_id = ? AND s.embedding_dim = ?'
            f' AND s.embedding_vec IS NOT NULL{where}'
            ' ORDER BY s.embedding_vec <=> ?::vector, s.stamp_ns DESC, s.id DESC LIMIT ?'),
            (vector, tagger_model_id, int(query.size), *params, vector, limit))
        for scene_id, stamp, cos in cursor.fetchall():
            cos = 0.0 if cos is None or cos != cos else float(cos)  # NaN: a zero vector
            yield int(scene_id), int(stamp), min(max((cos + 1.0) / 2.0, 0.0), 1.0)

    def recall(self, *args: Any, **kwargs: Any) -> list[MemoryMatch]:
        """Recall as SqlSceneStore.recall does, once more on a new connection if one dropped."""
        try:
            return super().recall(*args, **kwargs)
        except self._psycopg.OperationalError:
            if not self._read.broken:
                raise
            # Reads change nothing: asking again on a fresh connection is safe (writes are not
            # retried: the first may have committed before the connection dropped).
            return super().recall(*args, **kwargs)

    def close(self, timeout: float = _CLOSE_WAIT_S) -> None:
        """Close both connections, waiting at most ``timeout`` s in all for calls in progress."""
        self._closed = True
        deadline = time.monotonic() + timeout
        for role, lock in (('_write', self._write_lock), ('_read', self._read_lock)):
            # A write stuck on the network keeps its connection; it ends with the write.
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    getattr(self, role).close()
                finally:
                    lock.release()
