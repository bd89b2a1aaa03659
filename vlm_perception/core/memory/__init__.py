"""
Scene memory: when and where was X last seen.

Processed scenes (caption, tags, detections with positions, the tag model's image embedding, a
thumbnail) are kept when the scene changed or a period went by, in SQLite (one robot) or
PostgreSQL (a fleet), bounded in entries and bytes, oldest evicted first. Recall ranks them
against a query text by exact label match, then by embedding similarity.

Modules: entries (types, thumbnails), policy (ChangePolicy), store (SceneStore, open_store),
sql (shared SQL and scoring), sqlite_store, postgres_store, writer (MemoryWriter) and
scene_memory (SceneMemory, MemoryConfig). psycopg is imported only when a URL is opened.
"""

from vlm_perception.core.memory.entries import (MemoryEntry, MemoryMatch, normalise_label,
                                                thumbnail)
from vlm_perception.core.memory.policy import ChangePolicy
from vlm_perception.core.memory.scene_memory import MemoryConfig, SceneMemory
from vlm_perception.core.memory.store import (check_memory_url, MemoryStoreError,
                                              open_store, SceneStore)
from vlm_perception.core.memory.writer import MemoryWriter

__all__ = ['ChangePolicy', 'check_memory_url', 'MemoryConfig', 'MemoryEntry', 'MemoryMatch',
           'MemoryStoreError', 'MemoryWriter', 'normalise_label', 'open_store', 'SceneMemory',
           'SceneStore', 'thumbnail']
