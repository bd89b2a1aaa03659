"""
Presets: named sets of the slots' model ids, default labels and a detection threshold.

``default`` names hub models and a small everyday vocabulary. A directory preset is a folder
holding ``preset.json``, one key per model slot (core/slots.py)::

    {"detector": "detector", "tagger": "tagger", "vqa": "vqa", "captioner": "captioner",
     "labels": ["red circle", ...], "detection_threshold": 0.2}

Member values are folders relative to the preset folder (or, when no such folder exists, model
ids as anywhere else); missing members fall back to ``default``'s. ``tag_labels`` is optional.
A former key (``classifier`` for ``tagger``) still reads, with a DeprecatedName warning.
``shapes`` is the directory preset shipped at ``vlm_perception/models/shapes/``.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.slots import OLD_KEYS, renamed, Slot, SLOT_NAMES, SLOTS, warn_deprecated

PRESET_FILE = 'preset.json'
PACKAGED_PRESETS = {'shapes': Path(__file__).resolve().parent.parent / 'models' / 'shapes'}


def _model(self: 'Preset', slot: str) -> str:
    """Return the model id of a slot: detector, tagger, vqa or captioner."""
    if slot in OLD_KEYS:
        warn_deprecated(slot, OLD_KEYS[slot].key, 'model slot')
        slot = OLD_KEYS[slot].key
    if slot not in SLOT_NAMES:
        raise InputError(f"unknown model slot '{slot}' (one of {', '.join(SLOT_NAMES)})")
    return getattr(self, slot)


def _old_key_property(slot: Slot, old: str) -> property:
    def read(self: 'Preset') -> str:
        warn_deprecated(f'Preset.{old}', f'Preset.{slot.key}', 'attribute')
        return getattr(self, slot.key)

    return property(read, doc=f'Deprecated alias of {slot.key}.')


# Fields: name, one model id per slot (detector, tagger, vqa, captioner), labels,
# detection_threshold, tag_labels; former slot words read as deprecated properties.
Preset = dataclasses.make_dataclass(
    'Preset',
    [('name', str), *[(slot.key, str) for slot in SLOTS], ('labels', tuple[str, ...]),
     ('detection_threshold', float),
     ('tag_labels', tuple[str, ...] | None, dataclasses.field(default=None))],
    frozen=True,
    namespace={
        '__doc__': 'Model ids of the slots (detector, tagger, vqa, captioner), default labels '
                   'and detection threshold.',
        '__module__': __name__, 'model': _model,
        **{old: _old_key_property(slot, old) for old, slot in OLD_KEYS.items()}})


DEFAULT = Preset(
    name='default',
    detector='google/owlvit-base-patch32',
    tagger='ViT-B-32:laion2b_s34b_b79k',
    vqa='dandelin/vilt-b32-finetuned-vqa',
    captioner='Salesforce/blip-image-captioning-base',
    labels=('person', 'cup', 'bottle', 'chair', 'table', 'laptop', 'phone', 'book', 'bag',
            'door', 'dog', 'cat', 'plant'),
    detection_threshold=0.1,
)
BUILT_IN = {'default': DEFAULT}


def get_preset(name_or_dir: str | os.PathLike) -> Preset:
    """Return a built-in preset by name, a packaged one (``shapes``), or a preset folder's."""
    name = str(name_or_dir)
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name in PACKAGED_PRESETS:
        folder = PACKAGED_PRESETS[name]
        if not (folder / PRESET_FILE).is_file():
            raise ModelLoadError(
                f"preset '{name}' is not installed: {folder / PRESET_FILE} is missing (the "
                f'trained {name} models ship with the package once built)')
        return load_preset_dir(folder, name=name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return load_preset_dir(folder)
    known = ', '.join([*BUILT_IN, *PACKAGED_PRESETS])
    raise InputError(f"unknown preset '{name}': not one of {known}, nor a folder with "
                     f'{PRESET_FILE}')


def load_preset_dir(folder: str | os.PathLike, name: str | None = None) -> Preset:
    """Read a preset folder's ``preset.json``; member paths resolve against the folder."""
    folder = Path(folder).expanduser().resolve()
    spec_path = folder / PRESET_FILE
    try:
        spec = json.loads(spec_path.read_text(encoding='utf-8'))
    except OSError as error:
        raise InputError(f'cannot read preset {spec_path}: {error.strerror or error}') from error
    except json.JSONDecodeError as error:
        raise InputError(f'preset {spec_path} is not valid JSON: {error}') from error
    if not isinstance(spec, dict):
        raise InputError(f'preset {spec_path} must hold a JSON object')
    spec = renamed(spec, OLD_KEYS, 'key', f'preset {spec_path}: key')
    members = {}
    for slot in SLOT_NAMES:
        value = spec.get(slot)
        if value is None:
            members[slot] = DEFAULT.model(slot)
        elif (folder / str(value)).is_dir():
            members[slot] = str(folder / str(value))
        else:
            members[slot] = str(value)
    threshold = spec.get('detection_threshold', DEFAULT.detection_threshold)
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise InputError(f'preset {spec_path}: detection_threshold must be a number in 0..1')
    labels = _label_tuple(spec.get('labels', DEFAULT.labels), spec_path, 'labels')
    tag_labels = spec.get('tag_labels')
    return Preset(name=name or str(spec.get('name') or folder.name), labels=labels,
                  detection_threshold=float(threshold),
                  tag_labels=None if tag_labels is None else _label_tuple(
                      tag_labels, spec_path, 'tag_labels'),
                  **members)


def _label_tuple(value: object, spec_path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(f'preset {spec_path}: {key} must be a non-empty list of strings')
    return tuple(value)
