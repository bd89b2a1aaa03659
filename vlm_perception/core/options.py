"""
Model options: the settings every request of a capability shares, as one table.

OPTIONS generates the ModelOptions dataclass (EngineConfig.options), the CLI flags
(``--vqa-max-new-tokens``) and the node parameters (``vqa_max_new_tokens``). Backends read their
options from ``backend.options`` on each call; the engine replaces that object (under its lock)
when an option changes at run time. Options marked ``at_load`` shape how a model is loaded (the
image preprocessing, the runtimes) and hold from the next load on; on the node they are
read-only.
"""

from dataclasses import dataclass, fields, make_dataclass, replace
from typing import Any, Iterable, Union

from vlm_perception.core.errors import InputError

Value = Union[str, int, tuple[str, ...]]
# open_clip's 80 prompts of its OpenAI ImageNet zero-shot classifier, by name
TEMPLATE_SETS = ('openai',)
RESIZE_MODES = ('shortest', 'longest', 'squash')
RUNTIMES = ('torch', 'onnxruntime')  # of the detector's and tagger's encoders (onnx_runtime.py)
MAX_TEMPLATES = 128
MAX_NEW_TOKENS = 1024
MAX_BEAMS = 16


@dataclass(frozen=True)
class Option:
    """One model option: its name, kind ('string', 'integer', 'string_array'), default, help."""

    name: str
    kind: str
    default: Value
    description: str
    limits: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    at_load: bool = False

    @property
    def flag(self) -> str:
        """Return the command-line flag: the name with dashes."""
        return '--' + self.name.replace('_', '-')


OPTIONS: tuple[Option, ...] = (
    Option('detection_templates', 'string_array', ('{}',),
           "Prompt templates of detection labels, each with one {} for the label, or ['openai'] "
           "(open_clip's OpenAI ImageNet set); a label's query is the mean of its prompts' "
           'embeddings, computed once per vocabulary. Detection.label stays the label. OWL-ViT '
           'and OWLv2 only: Grounding DINO reads the labels as one phrase prompt.'),
    Option('tag_templates', 'string_array', ('{}',),
           'Prompt templates of tag labels, as detection_templates (the zero-shot classifier '
           'of open_clip.build_zero_shot_classifier).'),
    Option('tag_resize_mode', 'string', 'longest',
           'How the tagger fits a frame to its square input: longest (whole frame, padded), '
           'shortest (centre crop) or squash (stretched); open_clip models only.',
           choices=RESIZE_MODES, at_load=True),
    Option('vqa_max_new_tokens', 'integer', 32,
           'Most tokens of an answer (BLIP and generative VLMs).', limits=(1, MAX_NEW_TOKENS)),
    Option('caption_max_new_tokens', 'integer', 48,
           'Most tokens of a caption.', limits=(1, MAX_NEW_TOKENS)),
    Option('num_beams', 'integer', 1,
           'Beams of answer and caption generation; 1 = greedy.', limits=(1, MAX_BEAMS)),
    Option('caption_prompt', 'string', '',
           'Caption request of a generative VLM, or the text a BLIP caption continues; empty = '
           "the model's default."),
    Option('detector_runtime', 'string', 'torch',
           "What runs the detector's image and text encoders: torch, or onnxruntime (the "
           'export in onnx_dir; TensorRT or CUDA execution provider on a CUDA device where '
           'onnxruntime has one, else CPU). OWL-ViT and OWLv2 only; the class head stays torch.',
           choices=RUNTIMES, at_load=True),
    Option('tagger_runtime', 'string', 'torch',
           "What runs the tagger's image and text encoders: torch or onnxruntime, as "
           'detector_runtime. open_clip models only.', choices=RUNTIMES, at_load=True),
    Option('onnx_dir', 'string', '',
           'Folder of the ONNX exports (detector/, tagger/, as `vlm-perception export --onnx '
           'DIR` writes them) that the onnxruntime runtimes load; empty = none.', at_load=True),
)
OPTION_NAMES = tuple(option.name for option in OPTIONS)
OPTION_OF = {option.name: option for option in OPTIONS}


def problem(name: str, value: Any) -> str | None:
    """Return why value does not suit the option ``name``, or None."""
    option = OPTION_OF[name]
    if option.kind == 'integer':
        if isinstance(value, bool) or not isinstance(value, int):
            return f'{option.name} must be an integer, got {value!r}'
        low, high = option.limits
        if not low <= value <= high:
            return f'{option.name} must be within [{low}, {high}], got {value}'
    elif option.kind == 'string':
        if not isinstance(value, str):
            return f'{option.name} must be a string, got {value!r}'
        if option.choices and value not in option.choices:
            choices = ', '.join(option.choices)
            return f'{option.name}: unknown value {value!r}, expected one of {choices}'
    else:
        return template_problem(option.name, value)
    return None


def template_problem(name: str, templates: Any) -> str | None:
    """Return why templates are not a template list (or one named set), or None."""
    if isinstance(templates, str) or not all(isinstance(t, str) for t in templates):
        return f'{name} must be a list of strings, got {templates!r}'
    templates = list(templates)
    if not templates:
        return f'{name} is empty: use ["{{}}"] for the plain label'
    if len(templates) > MAX_TEMPLATES:
        return f'{name}: too many templates ({len(templates)} > {MAX_TEMPLATES})'
    if len(templates) == 1 and templates[0] in TEMPLATE_SETS:
        return None
    for template in templates:
        if template.count('{}') != 1 or template.replace('{}', '').count('{') \
                or template.replace('{}', '').count('}'):
            return f'{name}: template {template!r} must hold exactly one {{}} and no other ' \
                   f"braces (or be one of {', '.join(TEMPLATE_SETS)} alone)"
    return None


def _checked(self: 'ModelOptions') -> 'ModelOptions':
    """Return these options with lists as tuples; InputError naming the first bad one."""
    values = {}
    for option in OPTIONS:
        value = getattr(self, option.name)
        if option.kind == 'string_array' and not isinstance(value, str):
            value = tuple(value)
        reason = problem(option.name, value)
        if reason:
            raise InputError(reason)
        values[option.name] = value
    return replace(self, **values)


def _changed(self: 'ModelOptions', **changes: Value) -> 'ModelOptions':
    """Return a checked copy with some options changed; InputError for unknown names."""
    unknown = sorted(set(changes) - set(OPTION_NAMES))
    if unknown:
        raise InputError(f"unknown model option {unknown[0]} (one of {', '.join(OPTION_NAMES)})")
    return replace(self, **changes).checked()


ModelOptions = make_dataclass(
    'ModelOptions', [(option.name, Any, option.default) for option in OPTIONS], frozen=True,
    namespace={'__doc__': 'The model options in force (one field per entry of OPTIONS).',
               '__module__': __name__, 'checked': _checked, 'changed': _changed})


def with_preset_options(options: 'ModelOptions',
                        preset_options: Iterable[tuple[str, Value]]) -> 'ModelOptions':
    """Return options where those left at their defaults take the preset's values instead."""
    defaults = ModelOptions()
    return options.changed(**{name: value for name, value in preset_options
                              if getattr(options, name) == getattr(defaults, name)})


def option_values(options: 'ModelOptions') -> dict[str, Value]:
    """Return the options as a dict, name -> value."""
    return {field.name: getattr(options, field.name) for field in fields(options)}
