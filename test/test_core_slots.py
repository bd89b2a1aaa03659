"""The model slot table and what is generated from it: preset keys, CLI flags, parameters."""

import json
from pathlib import Path
import warnings

import pytest

from vlm_perception import cli
from vlm_perception.core import presets
from vlm_perception.core.engine import (CAPABILITIES, DEFAULT_CAPABILITIES, EngineConfig,
                                        PerceptionEngine)
from vlm_perception.core.slots import (DeprecatedName, OLD_FLAGS, OLD_KEYS, OLD_PARAMETERS,
                                       SLOT_NAMES, SLOTS)
from vlm_perception.ros import parameters

SHAPES_PRESET = Path(presets.__file__).resolve().parent.parent / 'models' / 'shapes'


def test_one_word_per_slot_and_the_capabilities_stay_verbs() -> None:
    assert SLOT_NAMES == ('detector', 'tagger', 'vqa', 'captioner', 'segmenter')
    assert CAPABILITIES == ('detect', 'tags', 'vqa', 'caption', 'segment')
    assert DEFAULT_CAPABILITIES == ('detect', 'tags', 'vqa', 'caption')  # segment: optional
    assert parameters.SPEC_BY_NAME['capabilities'].default == list(DEFAULT_CAPABILITIES)
    assert [slot.capability for slot in SLOTS] == list(CAPABILITIES)
    for slot in SLOTS:
        assert (slot.key, slot.flag, slot.parameter) == (
            slot.name, f'--{slot.name}', f'{slot.name}_model')
    assert {old: slot.name for old, slot in OLD_KEYS.items()} == {'classifier': 'tagger'}
    assert {old: slot.name for old, slot in OLD_FLAGS.items()} == {'--classifier': 'tagger'}
    assert {old: slot.parameter for old, slot in OLD_PARAMETERS.items()} == {
        'classifier_model': 'tagger_model', 'caption_model': 'captioner_model'}


def test_preset_fields_and_engine_config_fields_are_the_slots() -> None:
    fields = presets.Preset.__dataclass_fields__
    assert [name for name in fields if name in SLOT_NAMES] == list(SLOT_NAMES)
    for slot in SLOTS:
        assert presets.DEFAULT.model(slot.key) == getattr(presets.DEFAULT, slot.key)
        assert getattr(EngineConfig(), slot.parameter) is None
    with pytest.raises(Exception, match='unknown model slot'):
        presets.DEFAULT.model('painter')


@pytest.mark.parametrize('slot', SLOTS, ids=SLOT_NAMES)
def test_every_slot_has_a_cli_flag_setting_its_engine_model(slot) -> None:
    args = cli.build_parser().parse_args(['detect', 'x.png', slot.flag, 'some/model',
                                          '--device', 'cpu'])
    engine = cli.make_engine(args)  # models load on first use: none here
    assert getattr(engine.config, slot.parameter) == 'some/model'
    assert engine.model_ids[slot.capability] == 'some/model'
    others = [other for other in SLOTS if other is not slot]
    assert all(engine.model_ids[o.capability] == presets.DEFAULT.model(o.key) for o in others)


def test_the_former_cli_flag_still_works_and_warns(capsys) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(['tags', 'x.png', '--classifier', 'old/tagger'])
    assert args.tagger_model == 'old/tagger'
    assert "'--classifier' is deprecated, use '--tagger'" in capsys.readouterr().err
    help_text = cli.engine_options().format_help()
    assert '--tagger' in help_text and '--classifier' not in help_text


def test_every_slot_has_a_node_parameter_and_the_former_names_are_declared_apart() -> None:
    assert parameters.MODEL_PARAMETERS == {slot.parameter: slot.capability for slot in SLOTS}
    for slot in SLOTS:
        spec = parameters.SPEC_BY_NAME[slot.parameter]
        assert spec.kind == 'string' and spec.default == '' and not spec.read_only
    old = {spec.name: spec for spec in parameters.OLD_SPECS}
    assert set(old) == {'classifier_model', 'caption_model'}
    assert not set(old) & set(parameters.SPEC_BY_NAME)  # not in params.yaml either
    assert 'tagger_model' in old['classifier_model'].description
    assert parameters.OLD_MODEL_PARAMETERS == {'classifier_model': 'tagger_model',
                                               'caption_model': 'captioner_model'}


def test_engine_config_former_keywords_set_the_slot_fields_and_warn() -> None:
    with pytest.warns(DeprecatedName, match="'classifier_model' is deprecated, use "
                                            "'tagger_model'"):
        config = EngineConfig(classifier_model='a/tagger')
    assert config.tagger_model == 'a/tagger'
    with pytest.warns(DeprecatedName, match="'caption_model'.*'captioner_model'"):
        config = EngineConfig(caption_model='old', captioner_model='new')
    assert config.captioner_model == 'new'  # the current name wins
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert EngineConfig(tagger_model='t').tagger_model == 't'


def test_preset_json_with_slot_keys_and_with_the_former_key(tmp_path) -> None:
    (tmp_path / 'tagger').mkdir()
    (tmp_path / 'preset.json').write_text(json.dumps({'tagger': 'tagger', 'labels': ['a']}))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        preset = presets.get_preset(tmp_path)
    assert preset.tagger == str(tmp_path / 'tagger')

    (tmp_path / 'preset.json').write_text(json.dumps({'classifier': 'tagger', 'labels': ['a']}))
    with pytest.warns(DeprecatedName, match="key 'classifier' is deprecated, use 'tagger'"):
        old = presets.get_preset(tmp_path)
    assert old.tagger == str(tmp_path / 'tagger')
    with pytest.warns(DeprecatedName):
        assert old.classifier == old.tagger and old.model('classifier') == old.tagger
    with pytest.warns(DeprecatedName):
        engine = PerceptionEngine(EngineConfig(preset=str(tmp_path), device='cpu'))
    assert engine.model_ids['tags'] == str(tmp_path / 'tagger')


@pytest.mark.skipif(not (SHAPES_PRESET / 'preset.json').is_file(),
                    reason='shapes preset not built')
def test_the_shipped_shapes_preset_uses_the_slot_keys() -> None:
    spec = json.loads((SHAPES_PRESET / 'preset.json').read_text())
    on_by_default = {slot.name for slot in SLOTS if slot.on_by_default}  # no segmenter: default's
    assert on_by_default <= set(spec) and not set(OLD_KEYS) & set(spec)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        presets.get_preset('shapes')
