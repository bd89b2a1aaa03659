"""Generation options (answer and caption lengths, beams, caption prompt) equal generate()'s."""

import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import ModelOptions

QUESTION = 'what colour is the cup'


def _image(seed: int = 3, height: int = 40, width: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _engine(tiny_preset: pathlib.Path, **options: object) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu',
                                         options=ModelOptions(**options)))


def _blip_reference(folder: pathlib.Path, model_class: str, image: np.ndarray,
                    text: str | None, **generation: object) -> str:
    """BLIP as transformers runs it: its processor, then the model's own generate()."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    model = getattr(transformers, model_class).from_pretrained(str(folder)).eval()
    inputs = processor(images=image, text=text, return_tensors='pt')
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, **generation)
    return processor.tokenizer.decode(output[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize('options', [
    {'caption_max_new_tokens': 3},
    {'num_beams': 3, 'caption_max_new_tokens': 6},
    {'num_beams': 2, 'caption_max_new_tokens': 5, 'caption_prompt': 'a photo of'},
])
def test_blip_captions_follow_the_options_as_generate(tiny_preset: pathlib.Path,
                                                      options: dict) -> None:
    engine = _engine(tiny_preset, **options)
    image = _image()
    expected = _blip_reference(tiny_preset / 'captioner', 'BlipForConditionalGeneration', image,
                               options.get('caption_prompt'),
                               num_beams=options.get('num_beams', 1),
                               max_new_tokens=options['caption_max_new_tokens'])
    assert engine.caption(image) == expected
    tokens = engine.backend('caption').tokenizer(expected)['input_ids']
    assert len(tokens) - 2 <= options['caption_max_new_tokens'] + 3  # bounded by the option


@pytest.mark.parametrize('options', [{'vqa_max_new_tokens': 2},
                                     {'num_beams': 3, 'vqa_max_new_tokens': 4}])
def test_blip_answers_follow_the_options_as_generate(tiny_preset: pathlib.Path,
                                                     options: dict) -> None:
    engine = _engine(tiny_preset, **options)
    image = _image(4)
    answer = engine.answer(image, QUESTION)
    expected = _blip_reference(tiny_preset / 'vqa', 'BlipForQuestionAnswering', image, QUESTION,
                               num_beams=options.get('num_beams', 1),
                               max_new_tokens=options['vqa_max_new_tokens'])
    assert answer.answer == expected
    assert 0.0 < answer.confidence <= 1.0


def test_options_changed_at_run_time_reach_the_loaded_models(tiny_preset: pathlib.Path) -> None:
    engine = _engine(tiny_preset)
    image = _image(5)
    engine.caption(image)  # loaded with the defaults
    assert engine.set_options(caption_max_new_tokens=2, num_beams=2).num_beams == 2
    assert engine.backend('caption').options == engine.options
    assert engine.caption(image) == _blip_reference(
        tiny_preset / 'captioner', 'BlipForConditionalGeneration', image, None, num_beams=2,
        max_new_tokens=2)


@pytest.mark.parametrize('changes, message', [
    ({'num_beams': 0}, r'num_beams must be within \[1, 16\], got 0'),
    ({'vqa_max_new_tokens': 'many'}, 'vqa_max_new_tokens must be an integer'),
    ({'caption_prompt': 3}, 'caption_prompt must be a string'),
    ({'tag_resize_mode': 'crop'}, "unknown value 'crop'"),
    ({'top_p': 0.9}, 'unknown model option top_p'),
])
def test_bad_options_are_refused_and_the_old_ones_stay(tiny_preset: pathlib.Path,
                                                       changes: dict, message: str) -> None:
    engine = _engine(tiny_preset)
    with pytest.raises(InputError, match=message):
        engine.set_options(**changes)
    assert engine.options == ModelOptions()
    if 'top_p' not in changes:
        with pytest.raises(InputError, match=message):
            PerceptionEngine(EngineConfig(preset=str(tiny_preset),
                                          options=ModelOptions(**changes)))


def test_defaults_are_those_of_the_issue() -> None:
    defaults = dataclasses.asdict(ModelOptions())
    assert {name: defaults[name] for name in ('vqa_max_new_tokens', 'caption_max_new_tokens',
                                              'num_beams', 'caption_prompt')} == \
        {'vqa_max_new_tokens': 32, 'caption_max_new_tokens': 48, 'num_beams': 1,
         'caption_prompt': ''}
