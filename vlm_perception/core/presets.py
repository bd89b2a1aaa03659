"""
Presets: named sets of the four model ids, default labels and a detection threshold.

``default`` names hub models and a small everyday vocabulary. A directory preset is a folder
holding ``preset.json``::

    {"detector": "detector", "classifier": "classifier", "vqa": "vqa", "captioner": "captioner",
     "labels": ["red circle", ...], "detection_threshold": 0.2}

Member values are folders relative to the preset folder (or, when no such folder exists, model
ids as anywhere else); missing members fall back to ``default``'s. ``tag_labels`` is optional.
``shapes`` is the directory preset shipped at ``vlm_perception/models/shapes/``.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

from vlm_perception.core.errors import InputError, ModelLoadError

PRESET_FILE = 'preset.json'
ROLES = ('detector', 'classifier', 'vqa', 'captioner')
PACKAGED_PRESETS = {'shapes': Path(__file__).resolve().parent.parent / 'models' / 'shapes'}


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model ids of the four capabilities, default labels and detection threshold."""

    name: str
    detector: str
    classifier: str
    vqa: str
    captioner: str
    labels: tuple[str, ...]
    detection_threshold: float
    tag_labels: tuple[str, ...] | None = None

    def model(self, role: str) -> str:
        """Return the model id of a role: detector, classifier, vqa or captioner."""
        if role not in ROLES:
            raise InputError(f"unknown model role '{role}' (one of {', '.join(ROLES)})")
        return getattr(self, role)


DEFAULT = Preset(
    name='default',
    detector='google/owlvit-base-patch32',
    classifier='ViT-B-32:laion2b_s34b_b79k',
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
    members = {}
    for role in ROLES:
        value = spec.get(role)
        if value is None:
            members[role] = DEFAULT.model(role)
        elif (folder / str(value)).is_dir():
            members[role] = str(folder / str(value))
        else:
            members[role] = str(value)
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
