"""
An input rosbag2 recording (a bag folder, or a bare .mcap or .db3 file), read with rosbags.

Every failure to read (missing, not a bag, corrupt or truncated, read problems midway) is an
InputError whose one line names the bag, and where reading stopped.
"""

from pathlib import Path
from typing import Any, Iterator

from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, ReaderError

from vlm_perception.core.errors import InputError

STORAGES = ('mcap', 'sqlite3')
SUFFIX_STORAGE = {'.mcap': 'mcap', '.db3': 'sqlite3'}


def _reason(error: BaseException) -> str:
    """Return an error's first line, with its type where that is not rosbags' own."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    if not text:
        return type(error).__name__
    return text if isinstance(error, (ReaderError, FileNotFoundError)) \
        else f'{type(error).__name__}: {text}'


class BagReadError(InputError):
    """A recording that could be opened failed midway (corrupt or truncated)."""


class InputBag:
    """An open rosbag2 recording: topics, storage format, messages in bag-time order."""

    def __init__(self, path: str | Path) -> None:
        """Open the recording; InputError when it is missing or cannot be read."""
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise InputError(f"no bag at '{self.path}'")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as error:  # noqa: B902 (rosbags, sqlite and zstd raise many types)
            raise InputError(f"cannot read bag '{self.path}': {_reason(error)} (not a rosbag2 "
                             'recording, or corrupt or truncated: `ros2 bag reindex` or '
                             '`mcap recover` may repair one cut short)') from error
        self.connections: list[Connection] = list(self._reader.connections)

    @property
    def name(self) -> str:
        """Return the recording's file or folder name."""
        return self.path.name

    @property
    def storage(self) -> str:
        """Return the storage format, 'mcap' or 'sqlite3'."""
        if self.path.is_file():
            return SUFFIX_STORAGE[self.path.suffix]
        storages = getattr(self._reader.storage, 'storages', [])
        return 'mcap' if storages and 'mcap' in type(storages[0]).__name__.lower() \
            else 'sqlite3'

    @property
    def topics(self) -> dict[str, str]:
        """Return each topic's message type (the first connection's, where several)."""
        topics: dict[str, str] = {}
        for connection in self.connections:
            topics.setdefault(connection.topic, connection.msgtype)
        return topics

    def count(self, topic: str) -> int:
        """Return the number of messages recorded on a topic."""
        return sum(connection.msgcount for connection in self.connections
                   if connection.topic == topic)

    def messages(self) -> Iterator[tuple[Connection, int, Any]]:
        """
        Yield (connection, log time in ns, CDR data) in bag-time order.

        BagReadError when reading fails midway, or ends before the messages the recording's
        index counts (a damaged chunk can end it early without an error).
        """
        read = 0
        iterator = self._reader.messages()
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as error:  # noqa: B902 (as in __init__)
                raise BagReadError(f"bag '{self.path}' is corrupt or truncated after {read} "
                                   f'messages: {_reason(error)}') from error
            read += 1
            yield item
        expected = sum(connection.msgcount for connection in self.connections)
        if read < expected:
            raise BagReadError(f"bag '{self.path}' is corrupt or truncated: {read} of its "
                               f'{expected} messages could be read')

    def close(self) -> None:
        """Close the recording (an error closing one that failed midway is ignored)."""
        try:
            self._reader.close()
        except Exception:  # noqa: B902 (closing a broken file: nothing to tell the user)
            pass
