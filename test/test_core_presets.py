"""Built-in presets: every hub model is one the registry serves, cited from transformers' docs."""

import json
from pathlib import Path

import pytest
import transformers

from vlm_perception.core.backends import REGISTRY
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import ModelOptions
from vlm_perception.core.presets import BUILT_IN, get_preset, HUB_MODEL_TYPES, PRESET_NAMES
from vlm_perception.core.slots import SLOTS

TRANSFORMERS_MODELS = Path(transformers.__file__).parent / 'models'


def _hub_models() -> list[tuple[str, str, str]]:
    """Return (preset, slot, model id) of every hub model a built-in preset names."""
    return [(name, slot.name, preset.model(slot.name)) for name, preset in BUILT_IN.items()
            for slot in SLOTS if ':' not in preset.model(slot.name)]  # not open_clip's


@pytest.mark.parametrize('preset, slot, model_id', _hub_models())
def test_each_hub_model_is_served_by_the_registry_for_its_slot(preset: str, slot: str,
                                                               model_id: str) -> None:
    model_type = HUB_MODEL_TYPES[model_id]
    capability = next(s.capability for s in SLOTS if s.name == slot)
    assert (capability, model_type) in REGISTRY, (preset, slot, model_id)


@pytest.mark.parametrize('model_id, model_type', sorted(HUB_MODEL_TYPES.items()))
def test_each_hub_id_is_the_one_transformers_documents_for_its_type(model_id: str,
                                                                    model_type: str) -> None:
    """The id is cited in the model's own transformers code (its docs' examples and config)."""
    sources = sorted((TRANSFORMERS_MODELS / model_type.replace('-', '_')).glob('*.py'))
    assert sources, f'transformers has no model {model_type}'
    assert any(model_id in source.read_text(encoding='utf-8') for source in sources), \
        f'{model_id} is not cited by transformers/models/{model_type}'


def test_every_model_type_of_the_table_is_used_by_a_preset() -> None:
    assert {model_id for _, _, model_id in _hub_models()} == set(HUB_MODEL_TYPES)


@pytest.mark.parametrize('name', sorted(BUILT_IN))
def test_each_built_in_preset_builds_an_engine_without_loading(name: str) -> None:
    engine = PerceptionEngine(EngineConfig(preset=name, device='cpu'))
    assert engine.loaded == {}
    assert get_preset(name).name == name
    assert engine.model_ids['detect'] == BUILT_IN[name].detector


def test_preset_names_list_built_in_and_packaged() -> None:
    assert set(BUILT_IN) <= set(PRESET_NAMES) and 'shapes' in PRESET_NAMES
    with pytest.raises(InputError, match='unknown preset'):
        get_preset('no-such-preset')


def _preset_folder(tmp_path: Path, options: object) -> Path:
    (tmp_path / 'preset.json').write_text(json.dumps({'labels': ['cup'], 'options': options}))
    return tmp_path


def test_a_preset_sets_the_options_its_models_want_unless_the_user_does(
        tmp_path: Path) -> None:
    folder = _preset_folder(tmp_path, {'tag_resize_mode': 'squash',
                                       'tag_templates': ['a photo of a {}.']})
    engine = PerceptionEngine(EngineConfig(preset=str(folder), device='cpu'))
    assert engine.options.tag_resize_mode == 'squash'
    assert engine.options.tag_templates == ('a photo of a {}.',)
    assert engine.options.num_beams == 1  # not in the preset: the table's default
    chosen = PerceptionEngine(EngineConfig(preset=str(folder), device='cpu', options=ModelOptions(
        tag_resize_mode='shortest')))
    assert chosen.options.tag_resize_mode == 'shortest'
    assert chosen.options.tag_templates == ('a photo of a {}.',)


def test_the_shipped_shapes_preset_tags_squashed_frames_as_trained() -> None:
    try:
        shapes = get_preset('shapes')
    except Exception as error:  # the models are not built in this checkout
        pytest.skip(f'shapes preset unavailable: {error}')
    assert dict(shapes.options) == {'tag_resize_mode': 'squash'}


@pytest.mark.parametrize('options, message', [
    ({'tag_resize_mode': 'crop'}, "unknown value 'crop'"),
    ({'beams': 2}, 'unknown model option beams'),
    (['squash'], 'options must be a JSON object'),
])
def test_bad_preset_options_name_the_preset(tmp_path: Path, options: object,
                                            message: str) -> None:
    folder = _preset_folder(tmp_path, options)
    with pytest.raises(InputError, match=f'preset .*preset.json: .*{message}'):
        get_preset(str(folder))
