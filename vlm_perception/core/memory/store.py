"""
The scene store contract and the one way to open a store: ``open_store(path, url)``.

SQLite (``memory_path``, or in memory only when both are empty) for one robot, PostgreSQL
(``memory_url``) for a fleet writing into one database.
"""

import re
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from vlm_perception.core.errors import InputError
from vlm_perception.core.memory.entries import MemoryEntry, MemoryMatch

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RESULTS = 10
SCHEMA_VERSION = 1

_PASSWORD_ADVICE = ('memory_url must not contain a password (every node on the ROS graph can '
                    'read parameters): give it by PGPASSWORD or a PGPASSFILE (~/.pgpass) in '
                    "the node's environment instead")
# key=value connection strings: a password key anywhere, quoted or not.
_CONNINFO_PASSWORD = re.compile(r'(^|\s)password\s*=', re.IGNORECASE)


class MemoryStoreError(RuntimeError):
    """The memory database cannot be opened or used; the message names it and the fix."""


class SceneStore(Protocol):
    """
    Where remembered scenes live; safe to call from several threads.

    ``put`` (the writer thread) and ``recall`` (service threads) use connections of their own,
    so a slow write does not hold a recall up behind it.
    """

    description: str

    def put(self, entry: MemoryEntry) -> int:
        """Store an entry, evict the oldest beyond the bounds, return the entry's id."""

    def recall(self, query_text: str, query_embedding: np.ndarray | None = None,
               tagger_model_id: str = '', max_results: int = 0, since_ns: int = 0,
               until_ns: int = 0, source: str = '',
               thumbnails: bool = False) -> list[MemoryMatch]:
        """Return the best matches, best first (see ``SqlSceneStore.recall``)."""

    def count(self) -> int:
        """Return the number of entries."""

    def total_bytes(self) -> int:
        """Return the payload bytes of all entries, as the byte bound counts them."""

    def close(self, timeout: float = 2.0) -> None:
        """Close the connections, waiting at most ``timeout`` s in all for calls in progress."""


def check_memory_url(url: str) -> None:
    """Refuse a memory_url that is not PostgreSQL's or that carries a password."""
    text = url.strip()
    if '://' in text:
        parts = urlsplit(text)
        if parts.scheme not in ('postgresql', 'postgres'):
            raise InputError(f'memory_url must be a PostgreSQL URL (postgresql://user@host/db) '
                             f'or key=value string, got scheme {parts.scheme!r}')
        query = {key.lower() for key in parse_qs(parts.query, keep_blank_values=True)}
        # urlsplit's .password stops at a colon in the user info; any colon there is one.
        userinfo = parts.netloc.rpartition('@')[0] if '@' in parts.netloc else ''
        if ':' in userinfo or 'password' in query:
            raise InputError(_PASSWORD_ADVICE)
    elif _CONNINFO_PASSWORD.search(text):
        raise InputError(_PASSWORD_ADVICE)


def open_store(path: str = '', url: str = '', max_entries: int = DEFAULT_MAX_ENTRIES,
               max_bytes: int = DEFAULT_MAX_BYTES) -> SceneStore:
    """
    Open (creating its schema) the store ``path`` or ``url`` names.

    path: a SQLite file; url: a PostgreSQL database; neither: SQLite in memory only (lost when
    closed). Both set, or a password in the URL, is refused with an InputError.
    """
    if path and url:
        raise InputError('set memory_path (SQLite file) or memory_url (PostgreSQL), not both')
    if max_entries < 1 or max_bytes < 1:
        raise InputError('memory_max_entries and memory_max_bytes must be >= 1, got '
                         f'{max_entries} and {max_bytes}')
    if url:
        check_memory_url(url)
        from vlm_perception.core.memory.postgres_store import PostgresSceneStore

        return PostgresSceneStore(url, max_entries=max_entries, max_bytes=max_bytes)
    from vlm_perception.core.memory.sqlite_store import SqliteSceneStore

    return SqliteSceneStore(path, max_entries=max_entries, max_bytes=max_bytes)
