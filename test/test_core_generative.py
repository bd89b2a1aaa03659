"""Generative VLMs (SmolVLM, Qwen2.5-VL): answers, captions, one load, one encoding."""

import math
import pathlib

import numpy as np
import pytest
import torch

from vlm_perception.core.backends.generative import CAPTION_PROMPT
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import ModelOptions

FAMILIES = ['smolvlm', 'qwen2_5_vl']  # tiny_models.GENERATIVE_BUILDERS
QUESTION = 'What colour is the cup?'
MAX_ANSWER_TOKENS = ModelOptions().vqa_max_new_tokens
MAX_CAPTION_TOKENS = ModelOptions().caption_max_new_tokens


def _vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.model
    return inner.vision_model if hasattr(inner, 'vision_model') else inner.visual


def _image(seed: int = 7, height: int = 40, width: int = 70) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module', params=FAMILIES)
def generative_model(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    import tiny_models

    build = tiny_models.GENERATIVE_BUILDERS[request.param]
    return build(tmp_path_factory.mktemp(request.param) / 'model')


def _engine(tiny_preset: pathlib.Path, model: pathlib.Path,
            **options: object) -> PerceptionEngine:
    """Return an engine whose VQA and captioner slots both name the generative model's folder."""
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu',
                                         vqa_model=str(model), captioner_model=str(model),
                                         options=ModelOptions(**options)))


def _reference(model_folder: pathlib.Path, image: np.ndarray, text: str,
               max_new_tokens: int, num_beams: int = 1) -> tuple[str, float]:
    """Answer as transformers' own pipeline would: processor, chat template, model.generate."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_folder))
    model = AutoModelForImageTextToText.from_pretrained(str(model_folder)).eval()
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors='pt')
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, num_beams=num_beams,
                                max_new_tokens=max_new_tokens, output_scores=True,
                                return_dict_in_generate=True)
    new_tokens = output.sequences[0, inputs['input_ids'].shape[1]:]
    text = processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    log_probs = torch.stack([torch.log_softmax(score[0].float(), -1)[token]
                             for score, token in zip(output.scores, new_tokens)])
    return text, math.exp(float(log_probs.mean()))


def test_answers_and_captions_are_those_of_generate(tiny_preset: pathlib.Path,
                                                    generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    image = _image()
    frame = engine.frame(image)
    answer = engine.answer(frame, QUESTION)
    text, confidence = _reference(generative_model, image, QUESTION, MAX_ANSWER_TOKENS)
    assert answer.answer == text and answer.answer
    assert answer.confidence == pytest.approx(confidence, rel=1e-4)
    assert 0.0 < answer.confidence <= 1.0
    assert engine.caption(frame) == _reference(generative_model, image, CAPTION_PROMPT,
                                               MAX_CAPTION_TOKENS)[0]
    prompt = 'Describe the cup.'
    assert engine.caption(frame, prompt) == _reference(generative_model, image, prompt,
                                                       MAX_CAPTION_TOKENS)[0]
    # Another frame of another shape gets its own encoding (Qwen2.5-VL: another token count).
    other = _image(8, 64, 30)
    assert engine.answer(other, QUESTION).answer == _reference(
        generative_model, other, QUESTION, MAX_ANSWER_TOKENS)[0]


def test_generation_options_are_those_of_generate(tiny_preset: pathlib.Path,
                                                  generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model, vqa_max_new_tokens=3,
                     caption_max_new_tokens=5, num_beams=2, caption_prompt='Name one colour.')
    image = _image()
    answer = engine.answer(image, QUESTION)
    assert answer.answer == _reference(generative_model, image, QUESTION, 3, num_beams=2)[0]
    assert 0.0 < answer.confidence <= 1.0
    assert engine.caption(image) == _reference(generative_model, image, 'Name one colour.', 5,
                                               num_beams=2)[0]
    assert engine.caption(image, 'Describe the cup.') == _reference(
        generative_model, image, 'Describe the cup.', 5, num_beams=2)[0]


def test_one_model_serves_vqa_and_captions(tiny_preset: pathlib.Path,
                                           generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    engine.load(['vqa', 'caption'])
    assert engine.backend('vqa') is engine.backend('caption')
    assert engine.loaded == {'vqa': str(generative_model), 'caption': str(generative_model)}


def test_caption_first_then_vqa_shares_too(tiny_preset: pathlib.Path,
                                           generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    captioner = engine.backend('caption')
    assert engine.backend('vqa') is captioner


def test_one_image_encoding_per_frame(tiny_preset: pathlib.Path,
                                      generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    tower = _vision_tower(engine.backend('vqa').model)
    calls = []
    handle = tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        frame = engine.frame(_image())
        engine.answer(frame, QUESTION)
        engine.caption(frame)
        engine.answer(frame, 'How many dogs are there?')
        assert len(calls) == 1
        engine.caption(_image(9))  # a new frame is encoded anew
        assert len(calls) == 2
    finally:
        handle.remove()


def test_replacing_one_capability_keeps_the_other(tiny_preset: pathlib.Path,
                                                  generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    shared = engine.backend('vqa')
    assert engine.backend('caption') is shared
    engine.replace_model('caption', engine.model_for('caption'))  # the preset's BLIP
    assert engine.backend('vqa') is shared and engine.backend('caption') is not shared
    assert engine.answer(_image(), QUESTION).answer
    engine.replace_model('caption', str(generative_model))  # shared again, not loaded again
    assert engine.backend('caption') is shared


def test_over_long_question_or_prompt_is_refused_with_counts(
        tiny_preset: pathlib.Path, generative_model: pathlib.Path) -> None:
    engine = _engine(tiny_preset, generative_model)
    frame = engine.frame(_image())
    with pytest.raises(InputError, match=r'^question too long: 80 tokens, .* takes at most \d+$'):
        engine.answer(frame, ' '.join(['cup'] * 80))
    with pytest.raises(InputError, match=r'^prompt too long: 60 tokens, .* takes at most \d+$'):
        engine.caption(frame, ' '.join(['dog'] * 60))
    with pytest.raises(InputError, match='control token'):
        engine.answer(frame, f"Is there {engine.backend('vqa').processor.image_token} a cup?")
    assert engine.answer(frame, QUESTION).answer  # the engine still serves
