"""
An output rosbag2 recording, written in bag-time order through a queue, with rosbags.

Messages are queued with their bag time (log time) and written, in time order, once nothing
earlier can come: ``flush(until)`` writes those at or before ``until``. So outputs made for an
image that waited for its depth image still land in order among the copied input messages,
as ``ros2 bag play`` and Foxglove expect. ``close`` writes what is queued (``discard`` first
drops what should not be) and the metadata: the bag is then valid, however far the run got.
"""

import heapq
import itertools
from pathlib import Path
from typing import Any, Optional

from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from vlm_perception.bag.typestore import BagTypes
from vlm_perception.core.errors import InputError

STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# rosbag2 metadata version 9 from Kilted on (QoS written with names); 8 before
VERSION_8_STORES = ('ROS2_DASHING', 'ROS2_ELOQUENT', 'ROS2_FOXY', 'ROS2_GALACTIC',
                    'ROS2_HUMBLE', 'ROS2_IRON', 'ROS2_JAZZY')
_DEFAULT = QosTime(0, 0)  # deadline, lifespan, lease: the middleware's default (none)


def qos(depth: int, transient_local: bool = False) -> Qos:
    """Return a reliable keep-last QoS of depth (transient local, as for latched scenes)."""
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               _DEFAULT, _DEFAULT, QosLiveliness.AUTOMATIC, _DEFAULT, False)


class OutputBag:
    """A new recording: connections added, messages queued by bag time and written in order."""

    def __init__(self, path: str | Path, storage: str, types: BagTypes) -> None:
        """Create the recording (InputError when path exists or storage is unknown)."""
        self.path = Path(path).expanduser()
        if storage not in STORAGE_PLUGINS:
            raise InputError(f"unknown storage '{storage}' (one of "
                             f"{', '.join(STORAGE_PLUGINS)})")
        if self.path.exists():
            raise InputError(f"'{self.path}' exists already: choose another output or remove it")
        self.storage = storage
        self.types = types
        version = 8 if types.name in VERSION_8_STORES else 9
        self._writer = Writer(self.path, version=version,
                              storage_plugin=STORAGE_PLUGINS[storage])
        try:
            self._writer.open()
        except (OSError, WriterError) as error:
            raise InputError(f"cannot create '{self.path}': {error}") from error
        self._queue: list[tuple[int, int, Connection, bytes]] = []
        self._order = itertools.count()
        self.counts: dict[str, int] = {}

    def add_copy(self, connection: Connection) -> Optional[Connection]:
        """
        Add a connection like an input one; None when its type cannot be written.

        The input's own definition and type hash are kept where it has both; else they come
        from the store (which learns the type from the input's definition where it lacks it).
        """
        extra = {'serialization_format': connection.ext.serialization_format,
                 'offered_qos_profiles': connection.ext.offered_qos_profiles}
        if connection.msgdef.data and connection.digest:
            return self._add(connection.topic, connection.msgtype, msgdef=connection.msgdef.data,
                             rihs01=connection.digest, **extra)
        if not self.types.register_definition(connection.msgtype, connection.msgdef.data):
            return None
        return self._add(connection.topic, connection.msgtype, typestore=self.types.store,
                         **extra)

    def add_topic(self, topic: str, type_name: str, profile: Qos) -> Connection:
        """Add a topic of a type the store knows, offered with a QoS profile."""
        return self._add(topic, type_name, typestore=self.types.store,
                         offered_qos_profiles=[profile])

    def _add(self, topic: str, type_name: str, **arguments: Any) -> Connection:
        connection = self._writer.add_connection(topic, type_name, **arguments)
        self.counts.setdefault(topic, 0)
        return connection

    def queue(self, connection: Connection, timestamp: int, data: bytes) -> None:
        """Queue CDR data for a connection at a bag time (ns)."""
        heapq.heappush(self._queue, (timestamp, next(self._order), connection, data))

    def queue_message(self, connection: Connection, timestamp: int, message: Any) -> None:
        """Queue a message made by the store's ``make``."""
        self.queue(connection, timestamp, self.types.serialize(message))

    def flush(self, until: Optional[int] = None) -> None:
        """Write the queued messages at or before ``until`` ns (all when None), in time order."""
        while self._queue and (until is None or self._queue[0][0] <= until):
            timestamp, _, connection, data = heapq.heappop(self._queue)
            self._writer.write(connection, timestamp, data)
            self.counts[connection.topic] += 1

    def discard(self, after: int) -> int:
        """Drop the queued messages later than ``after`` ns; return how many."""
        kept = [item for item in self._queue if item[0] <= after]
        dropped = len(self._queue) - len(kept)
        self._queue = kept
        heapq.heapify(self._queue)
        return dropped

    def close(self) -> None:
        """Write what is queued and the metadata: the recording is complete and valid."""
        self.flush()
        self._writer.close()
