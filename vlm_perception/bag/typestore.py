"""
Message types of bag runs: a rosbags ROS 2 store, this package's msg/, vision_msgs' if installed.

The store is that of ``ROS_DISTRO`` where rosbags has one (a system ROS 2), else Kilted (the
distribution of the PyPI wheels this package is built with), else the newest rosbags knows.
vlm_perception's definitions are read from its installed share/ (AMENT_PREFIX_PATH, or
sys.prefix for a pip install), else from the source tree; vision_msgs' only from an installed
share/ (without it there is no detections_3d). ``BagTypes.make`` builds messages for
vlm_perception.core.message_layout, the fields not given at their defaults.
"""

from dataclasses import dataclass, field
import os
from pathlib import Path
import sys
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore

from vlm_perception.core.errors import InputError

PACKAGE = 'vlm_perception'
SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / 'msg'
KILTED = 'ROS2_KILTED'
# rosbags' primitive type names -> numpy dtypes (char and byte are octets in ROS 2)
NUMPY_TYPES = {'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'octet': np.uint8,
               'int8': np.int8, 'uint8': np.uint8, 'int16': np.int16, 'uint16': np.uint16,
               'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64,
               'float32': np.float32, 'float64': np.float64}
VISION_MSGS_3D = 'vision_msgs/msg/Detection3DArray'


def store_name(distro: Optional[str] = None) -> str:
    """Return the rosbags store to use: ROS_DISTRO's, else Kilted, else the newest ROS 2 one."""
    names = [store.name for store in Stores if store.name.startswith('ROS2_')]
    distro = os.environ.get('ROS_DISTRO', '') if distro is None else distro
    wanted = f'ROS2_{distro.upper()}'
    if distro and wanted in names:
        return wanted
    return KILTED if KILTED in names else names[-1]


def prefixes() -> list[Path]:
    """Return the install prefixes searched for share/<package>: AMENT_PREFIX_PATH, sys.prefix."""
    found = [Path(item) for item in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)
             if item]
    return list(dict.fromkeys([*found, Path(sys.prefix)]))


def msg_directory(package: str, search: Optional[Sequence[Path]] = None) -> Optional[Path]:
    """Return the first share/<package>/msg with .msg files under the prefixes, or None."""
    for prefix in prefixes() if search is None else search:
        folder = Path(prefix) / 'share' / package / 'msg'
        if folder.is_dir() and any(folder.glob('*.msg')):
            return folder
    return None


def msg_types(package: str, folder: Path) -> dict[str, Any]:
    """Return the rosbags type definitions of the .msg files of a package's msg/ folder."""
    types: dict[str, Any] = {}
    for path in sorted(folder.glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(encoding='utf-8'),
                                        f'{package}/msg/{path.stem}'))
    return types


@dataclass
class BagTypes:
    """A rosbags typestore with this package's types, and messages made and (de)serialised."""

    store: Typestore
    name: str
    sources: dict[str, Path] = field(default_factory=dict)  # package -> msg/ folder read

    @property
    def vision_msgs(self) -> bool:
        """Whether vision_msgs' types are known (detections_3d can be written)."""
        return VISION_MSGS_3D in self.store.fielddefs

    def knows(self, type_name: str) -> bool:
        """Whether the store has a type."""
        return type_name in self.store.fielddefs

    def register_definition(self, type_name: str, definition: str) -> bool:
        """Register a type from a bag's ros2msg definition unless known; False if unreadable."""
        if self.knows(type_name):
            return True
        try:
            types = get_types_from_msg(definition, type_name)  # with its MSG: dependencies
            self.store.register({name: value for name, value in types.items()
                                 if not self.knows(name)})
        except Exception:  # noqa: B902 (rosbags raises several types for a bad definition)
            return False
        return self.knows(type_name)

    def make(self, type_name: str, **fields: Any) -> Any:
        """Return a message of a type named in full; missing fields get their defaults."""
        kind = self.store.types[type_name]
        for name, description in self.store.fielddefs[type_name][1]:
            if name in fields:
                fields[name] = self._coerced(description, fields[name])
            else:
                fields[name] = self._default(description)
        return kind(**fields)

    def serialize(self, message: Any) -> bytes:
        """Return the CDR bytes of a message made by ``make``."""
        return bytes(self.store.serialize_cdr(message, message.__msgtype__))

    def deserialize(self, data: bytes, type_name: str) -> Any:
        """Return the message of CDR bytes; InputError when they are not one."""
        try:
            return self.store.deserialize_cdr(data, type_name)
        except Exception as error:  # noqa: B902 (rosbags raises several types for bad data)
            raise InputError(f'a {type_name} message could not be read '
                             f'({type(error).__name__}: {error})') from error

    def _default(self, description: tuple) -> Any:
        kind, spec = description
        if kind == Nodetype.BASE:
            return _base_default(spec[0])
        if kind == Nodetype.NAME:
            return self.make(spec)
        (item_kind, item_spec), length = spec
        numeric = item_kind == Nodetype.BASE and item_spec[0] in NUMPY_TYPES
        if kind == Nodetype.ARRAY:
            if numeric:
                return np.zeros(length, dtype=NUMPY_TYPES[item_spec[0]])
            return [self._default((item_kind, item_spec)) for _ in range(length)]
        return np.zeros(0, dtype=NUMPY_TYPES[item_spec[0]]) if numeric else []

    @staticmethod
    def _coerced(description: tuple, value: Any) -> Any:
        """Return value as rosbags serialises it: numpy arrays for numeric arrays."""
        kind, spec = description
        if kind not in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            return value
        (item_kind, item_spec), _ = spec
        if item_kind != Nodetype.BASE or item_spec[0] not in NUMPY_TYPES:
            return list(value)
        dtype = NUMPY_TYPES[item_spec[0]]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return np.frombuffer(value, dtype=dtype)
        return np.asarray(value, dtype=dtype)


def _base_default(type_name: str) -> Any:
    if type_name in ('string', 'wstring'):
        return ''
    if type_name == 'bool':
        return False
    return 0.0 if type_name.startswith('float') else 0


def load_types(search: Optional[Iterable[Path]] = None, distro: Optional[str] = None) -> BagTypes:
    """
    Return the store with vlm_perception's and (where found) vision_msgs' types registered.

    ``search``: the prefixes holding share/<package>/msg (default: ``prefixes()``).
    """
    search = prefixes() if search is None else list(search)
    name = store_name(distro)
    types = BagTypes(get_typestore(getattr(Stores, name)), name)
    own = msg_directory(PACKAGE, search) or SOURCE_MSG_DIR
    vision = msg_directory('vision_msgs', search)
    for package, folder in ((PACKAGE, own), ('vision_msgs', vision)):
        if folder is not None:
            definitions = msg_types(package, folder)
            types.store.register({key: value for key, value in definitions.items()
                                  if not types.knows(key)})
            types.sources[package] = folder
    return types
