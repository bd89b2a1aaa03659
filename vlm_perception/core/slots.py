"""
Model slots: the one table naming the engine's models, everywhere by the same word.

A slot holds the model of one capability. Its name is the preset.json key (``tagger``), the
command-line flag (``--tagger``), the node parameter and EngineConfig field (``tagger_model``)
and the Preset field; the capability it serves keeps its verb (``tags``), as in
``PerceptionEngine.model_ids`` and the node's ``capabilities`` parameter. Presets, the engine,
the CLI and the node parameters are generated from SLOTS.

Former names stay as deprecated aliases: they still work and warn (DeprecatedName, a
FutureWarning, so that users see it; the node logs a warning instead). ``old_words`` are former
words of the whole slot (a preset key, a ``--flag`` and a ``<word>_model`` parameter each);
``old_parameters`` are further former parameter (and EngineConfig keyword) names.
"""

from dataclasses import dataclass
from typing import Mapping, TypeVar
import warnings

Value = TypeVar('Value')


class DeprecatedName(FutureWarning):
    """A deprecated alias of a slot's key, flag or parameter was used; the message says which."""


@dataclass(frozen=True)
class Slot:
    """One model slot: its word, the capability it serves and its former names."""

    name: str
    capability: str
    description: str  # what the slot holds and which model ids it takes, no final stop
    old_words: tuple[str, ...] = ()
    old_parameters: tuple[str, ...] = ()
    # False: an optional capability, run only where the node's capabilities (or a load) list it.
    on_by_default: bool = True

    @property
    def key(self) -> str:
        """Return the slot's name, which is its preset.json key and Preset field."""
        return self.name

    @property
    def flag(self) -> str:
        """Return the command-line flag, ``--<name>``."""
        return f'--{self.name}'

    @property
    def parameter(self) -> str:
        """Return the node parameter and EngineConfig field, ``<name>_model``."""
        return f'{self.name}_model'

    @property
    def old_keys(self) -> tuple[str, ...]:
        """Return the deprecated preset.json keys."""
        return self.old_words

    @property
    def old_flags(self) -> tuple[str, ...]:
        """Return the deprecated command-line flags."""
        return tuple(f'--{word}' for word in self.old_words)

    @property
    def old_parameter_names(self) -> tuple[str, ...]:
        """Return the deprecated node parameter (and EngineConfig keyword) names."""
        return (*(f'{word}_model' for word in self.old_words), *self.old_parameters)


SLOTS: tuple[Slot, ...] = (
    Slot('detector', 'detect',
         'open-vocabulary detector: OWL-ViT, OWLv2 or Grounding DINO hub id or folder'),
    Slot('tagger', 'tags',
         'zero-shot tagger: open_clip NAME:PRETRAINED, hf-hub:org/repo, SigLIP hub id or folder',
         old_words=('classifier',)),
    Slot('vqa', 'vqa', 'visual question answering model: ViLT or BLIP VQA hub id or folder'),
    Slot('captioner', 'caption', 'captioning model: BLIP hub id or folder',
         old_parameters=('caption_model',)),
    Slot('segmenter', 'segment', 'box-prompted segmenter: SAM or SAM2 hub id or folder',
         on_by_default=False),
)
SLOT_NAMES = tuple(slot.name for slot in SLOTS)
SLOT_OF = {slot.capability: slot for slot in SLOTS}  # capability -> slot
# deprecated name -> slot, one mapping per place a name is used
OLD_KEYS = {old: slot for slot in SLOTS for old in slot.old_keys}
OLD_FLAGS = {old: slot for slot in SLOTS for old in slot.old_flags}
OLD_PARAMETERS = {old: slot for slot in SLOTS for old in slot.old_parameter_names}


def deprecation(old: str, new: str, where: str) -> str:
    """Return the message that a deprecated name was used: ``where 'old' is now 'new'``."""
    return f"{where} '{old}' is deprecated, use '{new}' (the old name still works for now)"


def warn_deprecated(old: str, new: str, where: str, stacklevel: int = 3) -> None:
    """Warn (DeprecatedName) that a deprecated name was used."""
    warnings.warn(deprecation(old, new, where), DeprecatedName, stacklevel=stacklevel)


def renamed(values: Mapping[str, Value], old_names: Mapping[str, Slot], new_name: str,
            where: str) -> dict[str, Value]:
    """
    Return values with deprecated names replaced by the new ones, warning once per old name.

    ``old_names`` is one of OLD_KEYS, OLD_PARAMETERS; ``new_name`` the Slot property naming the
    new one ('key' or 'parameter'). A value under the new name wins over its alias's (warned too).
    """
    result = {name: value for name, value in values.items() if name not in old_names}
    for old, value in values.items():
        slot = old_names.get(old)
        if slot is None:
            continue
        new = getattr(slot, new_name)
        warn_deprecated(old, new, where, stacklevel=4)
        result.setdefault(new, value)
    return result
