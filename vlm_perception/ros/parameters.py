"""
The node's parameters as data: names, types, defaults, descriptions, ranges, and checks.

The node declares every parameter from SPECS (with a ParameterDescriptor built from the spec)
and runs check() on every change; config/params.yaml lists the same defaults. The model
parameters (``<slot>_model``) come from the slot table, vlm_perception.core.slots; their former
names are declared too, from OLD_SPECS.
"""

from dataclasses import dataclass
import re
from typing import Optional, Sequence, Union

from vlm_perception.core.engine import CAPABILITIES, clean_labels, DEFAULT_CAPABILITIES
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import OPTION_OF, OPTIONS, problem
from vlm_perception.core.presets import PRESET_NAMES
from vlm_perception.core.slots import OLD_PARAMETERS, SLOTS

RELIABILITIES = ('best_effort', 'reliable')
# A camera name is a relative topic namespace: tokens of letters, digits and _, not starting
# with a digit, joined by single slashes (left, front/left).
CAMERA_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')
MIN_RATE = 0.01  # Hz: slower would wait hours, and 1 / rate overflows near 1e-10

Value = Union[str, bool, int, float, list[str]]


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter; default None means declared without a value (filled in by the node)."""

    name: str
    kind: str  # 'string', 'bool', 'integer', 'double' or 'string_array'
    default: Optional[Value]
    description: str
    limits: Optional[tuple[float, float]] = None
    choices: tuple[str, ...] = ()
    read_only: bool = False


SPECS: tuple[ParameterSpec, ...] = (
    ParameterSpec('preset', 'string', 'default',
                  f"Model preset: a built-in name ({', '.join(PRESET_NAMES)}) or a preset "
                  'folder.'),
    # one <slot>_model per model slot (core/slots.py): detector, tagger, vqa, captioner, segmenter
    *(ParameterSpec(slot.parameter, 'string', '',
                    slot.description[0].upper() + slot.description[1:]
                    + "; empty = the preset's.") for slot in SLOTS),
    ParameterSpec('capabilities', 'string_array', list(DEFAULT_CAPABILITIES),
                  'Models loaded at start and run on the stream: detect (every processed frame), '
                  'tags and caption (every scene_period), vqa (questions topic); segment (off '
                  'unless listed) masks the detections of every processed frame, and of queries '
                  'and locate. Queries (which always detect) and questions load their models on '
                  'first use when not listed.',
                  choices=CAPABILITIES),
    ParameterSpec('device', 'string', 'auto',
                  'Torch device: auto (CUDA when present, else CPU with a warning), cpu, cuda, '
                  'cuda:N.', read_only=True),
    ParameterSpec('dtype', 'string', 'auto',
                  'Weights precision: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.',
                  read_only=True),
    # model options (core/options.py): prompt templates, tag resize mode, generation
    *(ParameterSpec(option.name, option.kind,
                    list(option.default) if option.kind == 'string_array' else option.default,
                    option.description + (' Applied when the model loads.' if option.at_load
                                          else ''),
                    limits=option.limits, choices=option.choices, read_only=option.at_load)
      for option in OPTIONS),
    ParameterSpec('labels', 'string_array', None,
                  "Detection vocabulary (open-vocabulary queries); unset = the preset's. "
                  'Setting it acts like the set_labels service.'),
    ParameterSpec('detection_threshold', 'double', 0.0,
                  "Minimum detection score; 0 = the preset's threshold.", limits=(0.0, 1.0)),
    ParameterSpec('scene_period', 'double', 2.0,
                  'Seconds between caption and tags refreshes (scene, scene_text); '
                  '0 = on every processed frame.', limits=(0.0, 3600.0)),
    ParameterSpec('max_rate', 'double', 0.0,
                  'Most processed frames per second, 0.01 to 1000; 0 = as fast as frames and '
                  'models allow.', limits=(0.0, 1000.0)),
    ParameterSpec('max_image_age', 'double', 0.0,
                  'Skip frames older than this many seconds (now - header.stamp); 0 = any age.',
                  limits=(0.0, 3600.0)),
    ParameterSpec('image_timeout', 'double', 5.0,
                  'Seconds without an image before diagnostics WARN (ERROR after 3 times as '
                  'long) and scene_text says so every scene_period; 0 = off.',
                  limits=(0.0, 3600.0)),
    ParameterSpec('cameras', 'string_array', [],
                  'Camera names, one stream each in one node: camera N subscribes N/image (or '
                  'N/image/compressed), N/depth, N/camera_info and publishes N/detections, '
                  'N/scene and the other outputs under N/; new frames of several cameras are '
                  'detected in one batch. Empty = one camera on image, detections, ... as ever.',
                  read_only=True),
    ParameterSpec('compressed', 'bool', False,
                  'Subscribe <image>/compressed (sensor_msgs/CompressedImage) instead of image.',
                  read_only=True),
    ParameterSpec('image_reliability', 'string', 'best_effort',
                  'QoS reliability of the image subscription: best_effort or reliable.',
                  choices=RELIABILITIES, read_only=True),
    ParameterSpec('autostart', 'bool', True,
                  'Configure and activate at start (a plain node); false = a managed node that '
                  'waits unconfigured for a lifecycle manager.', read_only=True),
    ParameterSpec('warmup', 'bool', True,
                  'Run each loaded model once at start so the first frame is not slow.',
                  read_only=True),
    ParameterSpec('compile', 'bool', False,
                  'torch.compile each model as it loads: faster frames after a slow first run '
                  '(the warm-up); a model that fails to compile runs eagerly, with a warning.',
                  read_only=True),
    ParameterSpec('max_pending_queries', 'integer', 32,
                  'Requests (query, locate) waiting for the engine at most: the queue depth of '
                  'the services. A client that sends more waits or loses the rest (QoS).',
                  limits=(1, 1000), read_only=True),
    ParameterSpec('max_pending_questions', 'integer', 100,
                  'Questions waiting to be answered at most; more get an Answer starting '
                  'busy: (the subscription holds 10 times as many, so that a burst is seen).',
                  limits=(1, 10000),
                  read_only=True),
    ParameterSpec('use_depth', 'bool', False,
                  'Subscribe depth (16UC1 or 32FC1, registered to the image) and camera_info, and '
                  'place every detection in 3D (position, size).', read_only=True),
    ParameterSpec('depth_scale', 'double', 0.001,
                  'Metres per unit of a 16UC1 depth image (32FC1 is in metres).',
                  limits=(1e-6, 10.0)),
    ParameterSpec('min_depth', 'double', 0.1,
                  'Depths below this many metres are invalid (must be below max_depth).',
                  limits=(0.0, 1000.0)),
    ParameterSpec('max_depth', 'double', 10.0,
                  'Depths above this many metres are invalid (must be above min_depth).',
                  limits=(0.0, 1000.0)),
    ParameterSpec('depth_slop', 'double', 0.05,
                  'Most seconds between the stamps of an image and the depth image paired '
                  'with it.', limits=(0.0, 1.0)),
    ParameterSpec('target_frame', 'string', '',
                  'Frame of locate points, 3D markers and detections_3d (through tf2); '
                  'empty = the camera frame.'),
    ParameterSpec('tf_timeout', 'double', 0.1,
                  'Seconds to wait for the transform to target_frame at an image stamp.',
                  limits=(0.0, 10.0)),
    ParameterSpec('memory_path', 'string', '',
                  'Scene memory SQLite file (the recall service); empty = in memory only '
                  '(lost at deactivate), unless memory_url is set.', read_only=True),
    ParameterSpec('memory_url', 'string', '',
                  'Scene memory PostgreSQL URL (postgresql://user@host/db) for a fleet; no '
                  'password in it (PGPASSWORD or ~/.pgpass). Not with memory_path.',
                  read_only=True),
    ParameterSpec('memory_max_entries', 'integer', 10000,
                  'Most scenes remembered; the oldest are evicted first.',
                  limits=(1, 100_000_000), read_only=True),
    ParameterSpec('memory_max_bytes', 'integer', 268435456,
                  'Most bytes of remembered scenes (thumbnails, embeddings, text); the oldest '
                  'are evicted first.', limits=(1, 2 ** 62), read_only=True),
    ParameterSpec('memory_period', 'double', 30.0,
                  'Seconds after which a scene is remembered even when it did not change.',
                  limits=(0.0, 86400.0), read_only=True),
    ParameterSpec('memory_change', 'double', 0.1,
                  'Cosine distance of the tag embedding from the last remembered scene that '
                  'makes a scene new (a changed set of detected labels does too).',
                  limits=(0.0, 2.0), read_only=True),
    ParameterSpec('memory_queue', 'integer', 64,
                  'Scenes waiting to be written at most; more are dropped (and counted), so '
                  'the stream never waits for the database.', limits=(1, 100000),
                  read_only=True),
)

SPEC_BY_NAME = {spec.name: spec for spec in SPECS}
# Settable at run time: the new model loads beside the one serving, which stays if it fails.
MODEL_PARAMETERS = {slot.parameter: slot.capability for slot in SLOTS}  # name -> capability
# Deprecated parameter names (classifier_model, caption_model), declared besides SPECS and kept
# empty: a value given under one goes to its slot's parameter, with a warning.
OLD_MODEL_PARAMETERS = {old: slot.parameter for old, slot in OLD_PARAMETERS.items()}
OLD_SPECS: tuple[ParameterSpec, ...] = tuple(
    ParameterSpec(old, 'string', '', f'Deprecated: use {new} (setting this sets {new}).')
    for old, new in OLD_MODEL_PARAMETERS.items())


def check(name: str, value: Value) -> Optional[str]:
    """Return why value is not acceptable for parameter name, or None when it is."""
    spec = SPEC_BY_NAME.get(name)
    if spec is None:
        return None  # not ours (use_sim_time and the like)
    if name in OPTION_OF:
        return problem(name, value)
    if spec.limits is not None:
        low, high = spec.limits
        if not low <= value <= high:
            return f'{name} must be within [{low:g}, {high:g}], got {value!r}'
    if spec.choices:
        values: Sequence[str] = value if spec.kind == 'string_array' else [value]
        unknown = [item for item in values if item not in spec.choices]
        if unknown:
            expected = ', '.join(spec.choices)
            return f'{name}: unknown value {unknown[0]!r}, expected one of {expected}'
        if len(set(values)) != len(values):
            return f'{name}: repeated values in {list(values)!r}'
    if name == 'max_rate' and 0 < value < MIN_RATE:
        return f'max_rate must be 0 (no limit) or within [{MIN_RATE:g}, 1000], got {value!r}'
    if name == 'target_frame' and value != value.strip('/ '):
        return f'target_frame: no leading or trailing slash or space, got {value!r}'
    if name == 'labels':
        try:
            clean_labels(value)
        except InputError as error:
            return f'labels: {error}'
    if name == 'cameras':
        return check_cameras(value)
    return None


def check_cameras(names: Sequence[str]) -> Optional[str]:
    """Return why names cannot be the cameras (bad or repeated names), or None."""
    for camera in names:
        if not CAMERA_NAME.fullmatch(camera):
            return (f'cameras: {camera!r} is not a camera name (letters, digits and _, not '
                    'starting with a digit; / between parts, as in front/left)')
    if len(set(names)) != len(names):
        return f'cameras: repeated names in {list(names)!r}'
    return None


def check_depth_range(min_depth: float, max_depth: float) -> Optional[str]:
    """Return why min_depth and max_depth do not make a valid range, or None."""
    if min_depth >= max_depth:
        return f'min_depth ({min_depth:g}) must be below max_depth ({max_depth:g})'
    return None
