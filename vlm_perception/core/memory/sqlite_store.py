"""The embedded scene store: one SQLite file (or memory only), surviving a restart."""

import contextlib
import os
import sqlite3
import threading
import time
from typing import Iterator

import numpy as np

from vlm_perception.core.memory.sql import SqlSceneStore
from vlm_perception.core.memory.store import (DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES,
                                              MemoryStoreError)

SCHEMA = (
    'CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)',
    'CREATE TABLE IF NOT EXISTS memory_scenes ('
    ' id INTEGER PRIMARY KEY AUTOINCREMENT, stamp_ns INTEGER NOT NULL,'
    ' frame_id TEXT NOT NULL, source TEXT NOT NULL, caption TEXT NOT NULL,'
    ' tags TEXT NOT NULL, detections TEXT NOT NULL, tagger_model_id TEXT NOT NULL,'
    ' embedding_dim INTEGER NOT NULL, embedding BLOB, thumbnail BLOB NOT NULL,'
    ' bytes INTEGER NOT NULL)',
    'CREATE INDEX IF NOT EXISTS memory_scenes_stamp ON memory_scenes (stamp_ns, id)',
    'CREATE INDEX IF NOT EXISTS memory_scenes_model'
    ' ON memory_scenes (tagger_model_id, embedding_dim)',
    'CREATE TABLE IF NOT EXISTS memory_labels ('
    ' scene_id INTEGER NOT NULL REFERENCES memory_scenes (id) ON DELETE CASCADE,'
    ' label TEXT NOT NULL, PRIMARY KEY (label, scene_id))',
    # Eviction deletes scenes by id: the cascade finds their labels by this index.
    'CREATE INDEX IF NOT EXISTS memory_labels_scene ON memory_labels (scene_id)',
)
# How long a lock held by a process sharing the file is waited for before an error.
_CLOSE_WAIT_S = 2.0


class SqliteSceneStore(SqlSceneStore):
    """
    A SQLite scene store: ``path`` a file (WAL, so recalls read beside a write), '' memory.

    A file gets two connections, one writing and one reading; memory only has one database per
    connection, so both roles share one connection and its lock.
    """

    def __init__(self, path: str = '', max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, busy_timeout_s: float = 5.0) -> None:
        """Open (creating) the store at ``path``; wait ``busy_timeout_s`` for a locked file."""
        super().__init__(max_entries, max_bytes)
        self.path = os.path.expanduser(path) if path else ''
        self.description = f'SQLite {self.path}' if self.path else 'SQLite in memory'
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        try:
            self._write = self._connect()
            if self.path:
                self._write.execute('PRAGMA journal_mode=WAL')
            self._read = self._connect() if self.path else self._write
        except sqlite3.Error as error:
            raise MemoryStoreError(f'cannot open the memory file {self.path!r} ({error}): '
                                   'check memory_path and its folder') from None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock() if self.path else self._write_lock
        with self._writing() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
            self._check_schema_version(cursor)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None: transactions are the BEGIN / COMMIT written below, no others.
        connection = sqlite3.connect(self.path or ':memory:', timeout=self._busy_timeout_s,
                                     isolation_level=None, check_same_thread=False)
        connection.execute('PRAGMA foreign_keys=ON')
        connection.execute('PRAGMA synchronous=NORMAL')
        return connection

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection, lock: threading.Lock,
                     begin: str) -> Iterator[sqlite3.Cursor]:
        with lock:
            if self._closed:  # not sqlite3's ProgrammingError: a recall racing a deactivate
                raise MemoryStoreError(f'{self.description}: the scene store is closed')
            cursor = connection.cursor()
            try:
                cursor.execute(begin)
                try:
                    yield cursor
                except BaseException:
                    cursor.execute('ROLLBACK')
                    raise
                cursor.execute('COMMIT')
            finally:
                cursor.close()

    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        # IMMEDIATE: take the write lock up front, not half way through put + evict.
        return self._transaction(self._write, self._write_lock, 'BEGIN IMMEDIATE')

    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        # One snapshot for the queries of a recall.
        return self._transaction(self._read, self._read_lock, 'BEGIN')

    def _insert_scene(self, cursor: sqlite3.Cursor, row: tuple,
                      embedding: np.ndarray | None) -> int:
        cursor.execute(
            'INSERT INTO memory_scenes (stamp_ns, frame_id, source, caption, tags, detections,'
            ' tagger_model_id, embedding_dim, embedding, thumbnail, bytes)'
            ' VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', row)
        return int(cursor.lastrowid)

    def close(self, timeout: float = _CLOSE_WAIT_S) -> None:
        """Close the connections, waiting at most ``timeout`` s in all for calls in progress."""
        self._closed = True
        deadline = time.monotonic() + timeout
        for connection, lock in {id(self._write): (self._write, self._write_lock),
                                 id(self._read): (self._read, self._read_lock)}.values():
            # A write stuck behind another process's lock keeps its connection; it ends then.
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    connection.close()
                finally:
                    lock.release()
