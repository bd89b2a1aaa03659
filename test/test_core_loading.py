"""Model loading, presets, devices, the text cache and the summary, without network."""

import json
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from vlm_perception.core import presets
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.device import resolve_device, resolve_dtype
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.loading import (load_open_clip, model_type, OPEN_CLIP_CONFIG,
                                         OPEN_CLIP_WEIGHTS, save_open_clip_model)
from vlm_perception.core.slots import SLOT_OF
from vlm_perception.core.summary import summarize
from vlm_perception.core.types import Answer, Detection, LabelScore


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Run with HF_HUB_OFFLINE=1 and an empty Hugging Face cache."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def test_model_types_come_from_the_saved_configs(tiny_models: dict) -> None:
    kinds = {key: model_type(str(path)) for key, path in tiny_models.items()}
    assert kinds == {'detector': 'owlvit', 'detector_v2': 'owlv2', 'classifier': 'open_clip',
                     'vqa_vilt': 'vilt', 'vqa_blip': 'blip', 'captioner': 'blip',
                     'grounding_dino': 'grounding-dino', 'classifier_siglip': 'open_clip',
                     'tagger_siglip': 'siglip', 'tagger_siglip2': 'siglip2',
                     'segmenter': 'sam', 'segmenter_sam2': 'sam2'}


def test_open_clip_folder_round_trip_with_open_clip_itself(tmp_path, tiny_models: dict) -> None:
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    ours, _, tokenizer = load_open_clip(str(tiny_models['classifier']), 'cpu', torch.float32)
    assert {OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, 'tokenizer.json'} <= \
        {path.name for path in tiny_models['classifier'].iterdir()}
    theirs, _ = open_clip.create_model_from_pretrained(f"local-dir:{tiny_models['classifier']}")
    tokens = tokenizer(['red cup', 'a photo of a dog'])
    with torch.inference_mode():
        assert torch.equal(ours.encode_text(tokens), theirs.eval().encode_text(tokens))
    # A folder written by open_clip's own hub helper loads through our reader, and ours
    # writes it back identically.
    config = json.loads((tiny_models['classifier'] / OPEN_CLIP_CONFIG).read_text())['model_cfg']
    save_for_hf(theirs, tokenizer, config, tmp_path / 'theirs', safe_serialization=True)
    again, _, _ = load_open_clip(str(tmp_path / 'theirs'), 'cpu', torch.float32)
    save_open_clip_model(again, config, tmp_path / 'ours', tokenizer=tokenizer)
    reloaded, _, _ = load_open_clip(str(tmp_path / 'ours'), 'cpu', torch.float32)
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(reloaded.encode_image(image), ours.encode_image(image))


def test_missing_hub_model_offline_names_the_model_and_the_fix(offline, tmp_path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    engine = PerceptionEngine(EngineConfig(detector_model='vlm-perception-test/no-such-model',
                                           device='cpu'))
    with pytest.raises(ModelLoadError) as caught:
        engine.detect(image)
    message = str(caught.value)
    assert 'vlm-perception-test/no-such-model' in message and 'hf download' in message
    assert 'HF_HUB_OFFLINE' in message and '\n' not in message
    engine = PerceptionEngine(EngineConfig(device='cpu'))  # the default open_clip tag
    with pytest.raises(ModelLoadError, match='hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K'):
        engine.tags(image)


@pytest.mark.parametrize('model_id, capability, match', [
    ('./no/such/folder', 'detect', 'does not exist'),
    ('ViT-B-32:', 'tags', 'NAME:PRETRAINED'),
    ('captioner', 'detect', 'cannot do detect'),
    ('captioner', 'vqa', 'not the BlipForQuestionAnswering'),
    ('vqa_blip', 'caption', 'not the BlipForConditionalGeneration'),
    ('broken', 'detect', 'cannot load'),
])
def test_unusable_models_are_model_load_errors(tmp_path, tiny_models: dict, model_id: str,
                                               capability: str, match: str) -> None:
    if model_id == 'broken':
        shutil.copytree(tiny_models['detector'], tmp_path / 'broken')
        (tmp_path / 'broken' / 'model.safetensors').write_bytes(b'not weights')
        model_id = str(tmp_path / 'broken')
    elif model_id in tiny_models:
        model_id = str(tiny_models[model_id])
    parameter = SLOT_OF[capability].parameter
    engine = PerceptionEngine(EngineConfig(device='cpu', **{parameter: model_id}))
    with pytest.raises(ModelLoadError, match=match):
        engine.load([capability])


def test_default_preset_names_the_hub_models() -> None:
    default = presets.get_preset('default')
    assert default.detector == 'google/owlvit-base-patch32'
    assert default.tagger == 'ViT-B-32:laion2b_s34b_b79k'
    assert default.vqa == 'dandelin/vilt-b32-finetuned-vqa'
    assert default.captioner == 'Salesforce/blip-image-captioning-base'
    assert default.labels and 0.0 < default.detection_threshold < 1.0


def test_directory_preset_resolves_members_against_its_folder(tiny_preset) -> None:
    preset = presets.get_preset(str(tiny_preset))
    assert preset.detector == str(tiny_preset / 'detector')
    assert preset.labels[0] == 'cup' and preset.detection_threshold == 0.0
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    assert engine.model_ids['caption'] == str(tiny_preset / 'captioner')


def test_partial_preset_falls_back_to_default_members(tmp_path) -> None:
    (tmp_path / 'preset.json').write_text(json.dumps(
        {'detector': 'google/owlv2-base-patch16-ensemble', 'labels': ['a'],
         'tag_labels': ['x', 'y']}))
    preset = presets.get_preset(tmp_path)
    assert preset.detector == 'google/owlv2-base-patch16-ensemble'
    assert preset.captioner == presets.DEFAULT.captioner and preset.tag_labels == ('x', 'y')


def test_shapes_preset_is_the_packaged_folder_or_a_clear_error(monkeypatch, tmp_path) -> None:
    assert presets.PACKAGED_PRESETS['shapes'].parts[-3:] == ('vlm_perception', 'models', 'shapes')
    monkeypatch.setitem(presets.PACKAGED_PRESETS, 'shapes', tmp_path / 'shapes')
    with pytest.raises(ModelLoadError, match="preset 'shapes' is not installed"):
        presets.get_preset('shapes')


@pytest.mark.parametrize('content', ['{not json', '[]', '{"labels": []}',
                                     '{"detection_threshold": 2}'])
def test_bad_preset_files_are_input_errors(tmp_path, content: str) -> None:
    (tmp_path / 'preset.json').write_text(content)
    with pytest.raises(InputError):
        presets.get_preset(tmp_path)
    with pytest.raises(InputError, match='unknown preset'):
        presets.get_preset('no-such-preset')


def test_devices_and_dtypes() -> None:
    assert resolve_device('cpu') == 'cpu'
    assert resolve_device('auto') == ('cuda:0' if torch.cuda.is_available() else 'cpu')
    for bad in ('gpu', 'cuda:x', 'tpu'):
        with pytest.raises(InputError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match='CUDA is not available'):
            resolve_device('cuda:1')
    assert resolve_dtype('auto', 'cpu') == 'fp32' and resolve_dtype('auto', 'cuda:0') == 'fp16'
    assert resolve_dtype('BF16', 'cpu') == 'bf16'
    with pytest.raises(InputError):
        resolve_dtype('int8', 'cpu')


def test_text_cache_encodes_only_missing_texts_and_evicts_oldest() -> None:
    batches = []

    def encode(texts: list) -> list:
        batches.append(list(texts))
        return [f'embedding of {text}' for text in texts]

    cache = TextEmbeddingCache(capacity=3)
    assert cache.get('m', ['a', 'b', 'a'], encode) == ['embedding of a', 'embedding of b',
                                                       'embedding of a']
    cache.get('m', ['b', 'c'], encode)
    cache.get('other model', ['a'], encode)
    assert batches == [['a', 'b'], ['c'], ['a']] and len(cache) == 3
    cache.get('m', ['a'], encode)  # evicted: the least recently used
    assert batches[-1] == ['a']
    cache.clear('m')
    assert len(cache) == 1


def test_summary_paragraph() -> None:
    detections = [Detection('cup', 0.9, 10, 10, 4, 4), Detection('cup', 0.8, 90, 10, 4, 4),
                  Detection('person', 0.7, 50, 10, 4, 4)]
    text = summarize('a cup on a table', [LabelScore('kitchen', 0.7)], detections, 100,
                     Answer('is there a cup?', 'yes', 0.93))
    assert text == ('A cup on a table. It looks like: kitchen (0.70). Detected 3 objects: '
                    '2 cups on the left and on the right; one person in the centre. '
                    'Asked "is there a cup?", the answer is "yes" (confidence 0.93).')
    assert summarize('', [], [], 100) == 'No object of the vocabulary was detected.'
    assert summarize('', [], None, 100) == ''
