"""BLIP VQA caches the question encoder's cross-attention keys/values on the frame; batches."""

import contextlib
import pathlib
from typing import Iterator

import numpy as np
import pytest
import torch

from vlm_perception.core.backends.blip import generate_texts
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import OutOfMemory
from vlm_perception.core.options import ModelOptions

QUESTIONS = ['what colour is the cup', 'how many dogs are there', 'is there a cat on the table',
             'where is the red book']
OPTIONS = [{'vqa_max_new_tokens': 3}, {'num_beams': 3, 'vqa_max_new_tokens': 4}]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _engine(tiny_preset: pathlib.Path, tiny_models: dict, **options: object) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu',
                                         vqa_model=str(tiny_models['vqa_blip']),
                                         options=ModelOptions(**options)))


def _encoding(engine: PerceptionEngine, frame: object) -> object:
    """Return the frame's BLIP encoding, which must be there already."""
    def missing(image: object) -> None:
        raise AssertionError('the frame has no BLIP encoding')

    return frame.encoding(engine.backend('vqa').key, missing)


def _uncached(engine: PerceptionEngine, states: torch.Tensor,
              question: str) -> tuple[str, float]:
    """Answer as before the cache: the question encoder projects the image states itself."""
    backend = engine.backend('vqa')
    inputs = backend.tokenizer([question], return_tensors='pt')
    with torch.inference_mode():
        question_states = backend.model.text_encoder(
            input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask'],
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(states.shape[:-1], dtype=torch.long),
            return_dict=False)[0]
        return generate_texts(backend.model.text_decoder, backend.config.text_config,
                              question_states, None, backend.tokenizer, None,
                              backend.options.vqa_max_new_tokens, backend.options)[0]


def _generate(folder: pathlib.Path, image: np.ndarray, question: str, **generation: object) -> str:
    """Return the answer of transformers' own BlipForQuestionAnswering.generate()."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    model = transformers.BlipForQuestionAnswering.from_pretrained(str(folder)).eval()
    inputs = processor(images=image, text=question, return_tensors='pt')
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, **generation)
    return processor.tokenizer.decode(output[0], skip_special_tokens=True).strip()


@contextlib.contextmanager
def counted_projections(engine: PerceptionEngine) -> Iterator[list]:
    """Count the calls of the question encoder's cross-attention key and value projections."""
    calls: list = []
    handles = []
    for layer in engine.backend('vqa').model.text_encoder.encoder.layer:
        for projection in (layer.crossattention.self.key, layer.crossattention.self.value):
            handles.append(projection.register_forward_hook(
                lambda module, args, output: calls.append(module)))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize('options', OPTIONS)
def test_answers_on_one_frame_equal_generate_and_the_uncached_ones(
        tiny_preset: pathlib.Path, tiny_models: dict, options: dict) -> None:
    engine = _engine(tiny_preset, tiny_models, **options)
    image = _image(4)
    frame = engine.frame(image)
    answers = [engine.answer(frame, question) for question in QUESTIONS]
    # Random weights answer alike, but each question and image has its own confidence: equal
    # confidences below mean each question read its own frame's keys and values.
    assert len({answer.confidence for answer in answers}) == len(QUESTIONS)
    states = _encoding(engine, frame).states
    for question, answer in zip(QUESTIONS, answers):
        assert (answer.answer, answer.confidence) == _uncached(engine, states, question)
        assert answer.answer == _generate(
            tiny_models['vqa_blip'], image, question, num_beams=options.get('num_beams', 1),
            max_new_tokens=options['vqa_max_new_tokens'])
    # asked again on a new frame of the same image, nothing changes
    assert [engine.answer(image, question) for question in QUESTIONS] == answers
    other = engine.frame(_image(7))
    for question, answer in zip(QUESTIONS, answers):
        mine = engine.answer(other, question)
        assert mine.confidence != answer.confidence
        assert (mine.answer, mine.confidence) == \
            _uncached(engine, _encoding(engine, other).states, question)


def test_keys_and_values_are_projected_once_per_frame(tiny_preset: pathlib.Path,
                                                      tiny_models: dict) -> None:
    engine = _engine(tiny_preset, tiny_models, vqa_max_new_tokens=3)
    engine.answer(_image(1), QUESTIONS[0])  # loaded (and warmed) before counting
    layers = len(engine.backend('vqa').model.text_encoder.encoder.layer)
    frame = engine.frame(_image(2))
    with counted_projections(engine) as calls:
        engine.answer(frame, QUESTIONS[0])
        assert len(calls) == 2 * layers  # the first question projects them
        for question in QUESTIONS[1:]:
            engine.answer(frame, question)
        assert len(calls) == 2 * layers  # later ones on the frame read them
        engine.answer(engine.frame(_image(2)), QUESTIONS[0])
        assert len(calls) == 4 * layers  # a new frame projects its own


def test_questions_leave_the_frames_keys_and_values_as_they_were(
        tiny_preset: pathlib.Path, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, tiny_models, num_beams=2, vqa_max_new_tokens=3)
    frame = engine.frame(_image(3))
    engine.answer(frame, QUESTIONS[0])
    encoding = _encoding(engine, frame)
    before = [(keys.clone(), values.clone()) for keys, values in encoding.keys_values]
    first, second = encoding.cache(), encoding.cache()
    assert first is not second and first.self_attention_cache.get_seq_length() == 0
    batch = encoding.cache(3)
    for cache, size in ((first, 1), (batch, 3)):
        for layer, (keys, values) in zip(cache.cross_attention_cache.layers,
                                         encoding.keys_values):  # views of the frame's, no copy
            assert layer.keys.shape[0] == layer.values.shape[0] == size
            assert layer.keys.data_ptr() == keys.data_ptr()
            assert layer.values.data_ptr() == values.data_ptr()
    for question in QUESTIONS:
        engine.answer(frame, question)
    assert _encoding(engine, frame) is encoding
    for (keys, values), (old_keys, old_values) in zip(encoding.keys_values, before):
        assert torch.equal(keys, old_keys) and torch.equal(values, old_values)


@pytest.mark.parametrize('where', ['projection', 'question'])
def test_out_of_memory_drops_the_keys_and_values_and_the_next_answer_is_right(
        tiny_preset: pathlib.Path, tiny_models: dict, where: str) -> None:
    engine = _engine(tiny_preset, tiny_models, vqa_max_new_tokens=3)
    image = _image(5)
    expected = engine.answer(image, QUESTIONS[1])
    model = engine.backend('vqa').model
    layer = model.text_encoder.encoder.layer[-1]
    # in the frame's projections (first question), or in a later question's encoder
    failing = layer.crossattention.self.value if where == 'projection' else \
        layer.attention.self.query
    frame = engine.frame(image)
    if where == 'question':
        engine.answer(frame, QUESTIONS[0])

    def out_of_memory(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        handle.remove()  # once
        raise torch.OutOfMemoryError('CUDA out of memory (test)')

    handle = failing.register_forward_hook(out_of_memory)
    with pytest.raises(OutOfMemory, match='out of memory in vqa'):
        engine.answer(frame, QUESTIONS[1])
    assert frame._encodings == {}
    with counted_projections(engine) as calls:
        assert engine.answer(frame, QUESTIONS[1]) == expected
        assert engine.answer(frame, QUESTIONS[2]) == engine.answer(image, QUESTIONS[2])
    # projected again for the frame after the failure, and once for the new frame
    assert len(calls) == 4 * len(model.text_encoder.encoder.layer)


@pytest.mark.parametrize('options', OPTIONS)
@pytest.mark.parametrize('answerer', ['vqa_blip', 'vqa_vilt'])
def test_questions_answered_together_equal_each_answered_alone(
        tiny_preset: pathlib.Path, tiny_models: dict, options: dict, answerer: str) -> None:
    # the questions have different lengths: padded together, each must still be its own
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu',
                                           vqa_model=str(tiny_models[answerer]),
                                           options=ModelOptions(**options)))
    image = _image(6)
    alone = [engine.answer(image, question) for question in QUESTIONS]
    frame = engine.frame(image)
    together = engine.answer_many(frame, QUESTIONS)
    assert [answer.question for answer in together] == QUESTIONS
    for mine, expected in zip(together, alone):
        assert mine.answer == expected.answer
        assert mine.confidence == pytest.approx(expected.confidence, abs=1e-5)
    assert engine.answer_many(frame, QUESTIONS[2:3])[0] == engine.answer(frame, QUESTIONS[2])
    assert engine.answer_many(frame, []) == []


def test_one_bad_question_fails_the_batch_with_its_reason(tiny_preset: pathlib.Path,
                                                          tiny_models: dict) -> None:
    from vlm_perception.core.errors import InputError

    engine = _engine(tiny_preset, tiny_models, vqa_max_new_tokens=3)
    with pytest.raises(InputError, match='question too long'):
        engine.answer_many(_image(1), [QUESTIONS[0], 'cup ' * 100])
    with pytest.raises(InputError):
        engine.answer_many(_image(1), [QUESTIONS[0], '   '])
