"""
Presets: named sets of the slots' model ids, default labels and a detection threshold.

``default`` names hub models and a small everyday vocabulary. A directory preset is a folder
holding ``preset.json``, one key per model slot (core/slots.py)::

    {"detector": "detector", "tagger": "tagger", "vqa": "vqa", "captioner": "captioner",
     "labels": ["red circle", ...], "detection_threshold": 0.2}

Member values are folders relative to the preset folder (or, when no such folder exists, model
ids as anywhere else); missing members fall back to ``default``'s. ``tag_labels`` is optional,
and so is ``options``: model options (core/options.py) the preset's models want, such as
``{"tag_resize_mode": "squash"}`` for a tagger trained on squashed frames; they apply to the
options a user leaves at their defaults. A former key (``classifier`` for ``tagger``) still
reads, with a DeprecatedName warning. ``shapes`` is the directory preset shipped at
``vlm_perception/models/shapes/``.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.options import ModelOptions
from vlm_perception.core.slots import OLD_KEYS, renamed, Slot, SLOT_NAMES, SLOTS, warn_deprecated

PRESET_FILE = 'preset.json'
PACKAGED_PRESETS = {'shapes': Path(__file__).resolve().parent.parent / 'models' / 'shapes'}


def _model(self: 'Preset', slot: str) -> str:
    """Return the model id of a slot: detector, tagger, vqa, captioner or segmenter."""
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


# Fields: name, one model id per slot (detector, tagger, vqa, captioner, segmenter), labels,
# detection_threshold, tag_labels; former slot words read as deprecated properties.
Preset = dataclasses.make_dataclass(
    'Preset',
    [('name', str), *[(slot.key, str) for slot in SLOTS], ('labels', tuple[str, ...]),
     ('detection_threshold', float),
     ('tag_labels', tuple[str, ...] | None, dataclasses.field(default=None)),
     ('options', tuple[tuple[str, object], ...], dataclasses.field(default=()))],
    frozen=True,
    namespace={
        '__doc__': 'Model ids of the slots (detector, tagger, vqa, captioner, segmenter), '
                   'default labels, detection threshold and model options ((name, value) '
                   'pairs: those its models want, applied where a user keeps the default).',
        '__module__': __name__, 'model': _model,
        **{old: _old_key_property(slot, old) for old, slot in OLD_KEYS.items()}})


DEFAULT = Preset(
    name='default',
    detector='google/owlvit-base-patch32',
    tagger='ViT-B-32:laion2b_s34b_b79k',
    vqa='dandelin/vilt-b32-finetuned-vqa',
    captioner='Salesforce/blip-image-captioning-base',
    # SAM ViT-B, as in https://huggingface.co/docs/transformers/model_doc/sam; loaded only when
    # the segment capability is used.
    segmenter='facebook/sam-vit-base',
    labels=('person', 'cup', 'bottle', 'chair', 'table', 'laptop', 'phone', 'book', 'bag',
            'door', 'dog', 'cat', 'plant'),
    detection_threshold=0.1,
)
# Presets of the newer families, each on default's vocabulary and threshold unless set. Hub ids
# are those the transformers documentation of each model names (model_doc/<type>, the same ids
# its configuration and modeling code cite; test_core_presets finds each there).
BUILT_IN = {preset.name: preset for preset in (
    DEFAULT,
    # OWLv2 B/16 (model_doc/owlv2): more accurate than OWL-ViT, slower (960 px input).
    dataclasses.replace(DEFAULT, name='owlv2', detector='google/owlv2-base-patch16-ensemble'),
    # Grounding DINO tiny (model_doc/grounding-dino), SigLIP (model_doc/siglip) and SmolVLM2
    # (model_doc/smolvlm) answering and captioning from one load: phrase grounding, free-form
    # answers; detection_threshold as the Grounding DINO examples' box threshold.
    dataclasses.replace(DEFAULT, name='grounding', detector='IDEA-Research/grounding-dino-tiny',
                        tagger='google/siglip-base-patch16-224',
                        vqa='HuggingFaceTB/SmolVLM2-2.2B-Instruct',
                        captioner='HuggingFaceTB/SmolVLM2-2.2B-Instruct',
                        detection_threshold=0.35),
    # MM Grounding DINO tiny (model_doc/mm-grounding-dino) and SigLIP2 (model_doc/siglip2).
    dataclasses.replace(DEFAULT, name='mm_grounding',
                        detector='openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det',
                        tagger='google/siglip2-base-patch16-224', detection_threshold=0.35),
    # OmDet-Turbo (model_doc/omdet-turbo): real-time open vocabulary detection.
    dataclasses.replace(DEFAULT, name='realtime', detector='omlab/omdet-turbo-swin-tiny-hf',
                        detection_threshold=0.3),
    # Qwen2.5-VL 7B (model_doc/qwen2_5_vl) for answers and captions, a GPU with 16+ GB.
    dataclasses.replace(DEFAULT, name='qwen', vqa='Qwen/Qwen2.5-VL-7B-Instruct',
                        captioner='Qwen/Qwen2.5-VL-7B-Instruct'),
)}
# The transformers model_type of every hub model the built-in presets name (open_clip models,
# NAME:PRETRAINED, have none): the registry must serve each slot's capability with it.
HUB_MODEL_TYPES = {
    'google/owlvit-base-patch32': 'owlvit',
    'google/owlv2-base-patch16-ensemble': 'owlv2',
    'IDEA-Research/grounding-dino-tiny': 'grounding-dino',
    'openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det': 'mm-grounding-dino',
    'omlab/omdet-turbo-swin-tiny-hf': 'omdet-turbo',
    'google/siglip-base-patch16-224': 'siglip',
    'google/siglip2-base-patch16-224': 'siglip2',
    'dandelin/vilt-b32-finetuned-vqa': 'vilt',
    'Salesforce/blip-image-captioning-base': 'blip',
    'HuggingFaceTB/SmolVLM2-2.2B-Instruct': 'smolvlm',
    'Qwen/Qwen2.5-VL-7B-Instruct': 'qwen2_5_vl',
    'facebook/sam-vit-base': 'sam',
}
PRESET_NAMES = (*BUILT_IN, *PACKAGED_PRESETS)


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
    options = spec.get('options', {})
    if not isinstance(options, dict):
        raise InputError(f'preset {spec_path}: options must be a JSON object')
    try:
        ModelOptions().changed(**options)
    except InputError as error:
        raise InputError(f'preset {spec_path}: {error}') from error
    return Preset(name=name or str(spec.get('name') or folder.name), labels=labels,
                  options=tuple((key, tuple(value) if isinstance(value, list) else value)
                                for key, value in options.items()),
                  detection_threshold=float(threshold),
                  tag_labels=None if tag_labels is None else _label_tuple(
                      tag_labels, spec_path, 'tag_labels'),
                  **members)


def _label_tuple(value: object, spec_path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(f'preset {spec_path}: {key} must be a non-empty list of strings')
    return tuple(value)
