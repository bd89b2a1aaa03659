"""Questions and caption prompts longer than the model's text positions are refused up front."""

import re

import numpy as np
import pytest
from tiny_models import TEXT_LENGTH

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import ModelOptions
from vlm_perception.core.presets import PACKAGED_PRESETS

IMAGE = np.random.default_rng(11).integers(0, 256, (40, 70, 3), dtype=np.uint8)
SHAPES_BUILT = (PACKAGED_PRESETS['shapes'] / 'preset.json').is_file()

# The position table each model's text actually goes through (not the config that sizes it).
POSITION_TABLES = {
    'vqa_vilt': lambda model: model.vilt.embeddings.text_embeddings.position_embeddings,
    'vqa_blip': lambda model: model.text_encoder.embeddings.position_embeddings,
    'captioner': lambda model: model.text_decoder.bert.embeddings.position_embeddings,
}


def _engine(tiny_models: dict, vqa: str = 'vqa_blip') -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(
        preset='default', device='cpu', vqa_model=str(tiny_models[vqa]),
        captioner_model=str(tiny_models['captioner'])))


def _text(tokens: int) -> str:
    """Text the tiny word-level tokenizer turns into `tokens` tokens, [BOS] and [EOS] included."""
    return ' '.join(['red'] * (tokens - 2))


def _too_long(what: str, count: int, model_id: str, limit: int) -> str:
    return (rf'^{what} too long: {count} tokens, {re.escape(model_id)} '
            rf'takes at most {limit}$')


def _positions(engine: PerceptionEngine, capability: str, key: str) -> int:
    return POSITION_TABLES[key](engine.backend(capability).model).num_embeddings


@pytest.mark.parametrize('key, limit', [('vqa_vilt', 2 * TEXT_LENGTH),
                                        ('vqa_blip', 4 * TEXT_LENGTH)])
def test_question_of_the_limit_is_answered_one_token_more_is_refused(
        tiny_models: dict, key: str, limit: int) -> None:
    engine = _engine(tiny_models, key)
    assert _positions(engine, 'vqa', key) == limit
    tokenizer = engine.backend('vqa').tokenizer
    question = _text(limit)
    assert len(tokenizer(question)['input_ids']) == limit
    answer = engine.answer(IMAGE, question)
    assert answer.question == question and isinstance(answer.answer, str)
    assert 0.0 <= answer.confidence <= 1.0
    longer = _text(limit + 1)
    assert len(longer) <= 512  # under the engine's character cap: the token check refuses it
    with pytest.raises(InputError,
                       match=_too_long('question', limit + 1, engine.model_ids['vqa'], limit)):
        engine.answer(IMAGE, longer)


def test_vilt_no_longer_truncates_silently(tiny_models: dict) -> None:
    engine = _engine(tiny_models, 'vqa_vilt')
    limit = _positions(engine, 'vqa', 'vqa_vilt')
    frame = engine.frame(IMAGE)
    engine.answer(frame, _text(limit))
    # Far past the limit, where the tokenizer used to cut the question to its first words.
    with pytest.raises(InputError,
                       match=_too_long('question', limit + 20, engine.model_ids['vqa'], limit)):
        engine.answer(frame, _text(limit + 20))
    with pytest.raises(InputError, match='^question too long'):
        engine.describe(frame, question=_text(limit + 1), caption=False, tags=False,
                        detect=False)


def test_caption_prompt_leaves_room_for_the_caption(tiny_models: dict) -> None:
    engine = _engine(tiny_models)
    positions = _positions(engine, 'caption', 'captioner')
    assert positions == 4 * TEXT_LENGTH
    # The decoder sees the prompt without its closing token, then new tokens up to its positions.
    limit = positions
    prompt = _text(limit - 8)
    caption = engine.caption(IMAGE, prompt=prompt)
    assert caption.startswith(prompt) and len(caption) > len(prompt)
    assert engine.caption(IMAGE, prompt=_text(limit)).startswith(_text(limit))
    for count in (limit + 1, limit + 20):
        with pytest.raises(InputError, match=_too_long(
                'prompt', count, engine.model_ids['caption'], limit)):
            engine.caption(IMAGE, prompt=_text(count))
    assert engine.caption(IMAGE) and engine.caption(IMAGE, prompt='a photo of')


@pytest.fixture(scope='module')
def shapes() -> PerceptionEngine:
    if not SHAPES_BUILT:
        pytest.skip(f"the shapes preset is not built ({PACKAGED_PRESETS['shapes']} is missing): "
                    'run `make models`')
    return PerceptionEngine(EngineConfig(preset='shapes', device='cpu'))


def test_shapes_vqa_refuses_a_200_character_question(shapes: PerceptionEngine) -> None:
    positions = _positions(shapes, 'vqa', 'vqa_blip')
    tokenizer = shapes.backend('vqa').tokenizer
    at_limit = ' '.join(['red'] * (positions - 2))
    assert len(tokenizer(at_limit)['input_ids']) == positions
    assert shapes.answer(IMAGE, at_limit).answer
    question = ('is there a red circle to the left of the blue square and a green triangle '
                'above the yellow circle, or is there a red square below the green circle '
                'and a small blue triangle at the top right corner?')
    assert 190 <= len(question) <= 210
    count = len(tokenizer(question)['input_ids'])
    assert count > positions
    with pytest.raises(InputError, match=_too_long(
            'question', count, shapes.model_ids['vqa'], positions)):
        shapes.answer(IMAGE, question)


def test_shapes_captioner_prompt_limit(shapes: PerceptionEngine) -> None:
    positions = _positions(shapes, 'caption', 'captioner')
    limit = positions
    tokenizer = shapes.backend('caption').tokenizer
    prompt = ' '.join(['red'] * (limit - 2))
    assert len(tokenizer(prompt)['input_ids']) == limit
    assert shapes.caption(IMAGE, prompt=prompt).startswith(prompt)
    assert shapes.caption(IMAGE, prompt='a photo of').startswith('a photo of')
    longer = ' '.join(['red'] * (limit - 1))
    with pytest.raises(InputError, match=_too_long(
            'prompt', limit + 1, shapes.model_ids['caption'], limit)):
        shapes.caption(IMAGE, prompt=longer)


def test_captions_stop_at_the_decoder_positions_whatever_the_option(
        tiny_models: dict) -> None:
    engine = PerceptionEngine(EngineConfig(
        preset='default', device='cpu', captioner_model=str(tiny_models['captioner']),
        vqa_model=str(tiny_models['vqa_blip']),
        options=ModelOptions(caption_max_new_tokens=1024, vqa_max_new_tokens=1024)))
    positions = _positions(engine, 'caption', 'captioner')
    tokenizer = engine.backend('caption').tokenizer
    for prompt in (None, _text(positions - 1)):
        caption = engine.caption(IMAGE, prompt=prompt)
        assert len(tokenizer(caption)['input_ids']) <= positions + 1
    assert engine.answer(IMAGE, 'what is it').answer
