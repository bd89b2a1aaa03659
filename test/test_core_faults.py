"""
Out of memory survived, through the injected fault, and models replaced while the engine serves.

Real tiny models throughout; VLM_PERCEPTION_INJECT_OOM makes torch's out-of-memory error happen
inside the engine's guarded regions, so the real conversion and trimming run.
"""

import threading

import numpy as np
import pytest
from tiny_models import build_owlvit
import torch

from vlm_perception.core import loading
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError, ModelLoadError, OutOfMemory
from vlm_perception.core.faults import INJECT_OOM_ENV, parse_inject_oom
from vlm_perception.core.types import Detection

WAIT_S = 120  # generous: only a broken engine ever waits this long


def _images(count: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 70, 3), dtype=np.uint8) for _ in range(count)]


def _engine(tiny_preset, **overrides) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(**{'preset': str(tiny_preset), 'device': 'cpu',
                                            **overrides}))


def _in_another_thread(call, *args):
    """Run call(*args) in a new thread; return its result (fails if it does not end in time)."""
    results, errors = [], []

    def run() -> None:
        try:
            results.append(call(*args))
        except Exception as error:  # noqa: B902 (re-raised below)
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), 'the engine lock was not released'
    if errors:
        raise errors[0]
    return results[0]


@pytest.fixture(autouse=True)
def no_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INJECT_OOM_ENV, raising=False)


@pytest.fixture(scope='module')
def other_detector(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build an OWL-ViT detector like the preset's, with other weights (seed 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return str(build_owlvit(tmp_path_factory.mktemp('other') / 'detector', seed=1))
    finally:
        torch.set_num_threads(threads)


# --- out of memory ----------------------------------------------------------------------------

def test_out_of_memory_in_a_call_loses_that_call_only(tiny_preset,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _engine(tiny_preset)
    monkeypatch.setenv(INJECT_OOM_ENV, 'call:3')
    engine = _engine(tiny_preset)
    monkeypatch.delenv(INJECT_OOM_ENV)  # read at construction: unsetting it changes nothing
    calls, failed = 0, []
    for index, image in enumerate(_images(7)):
        frame = engine.frame(image)
        calls += 1
        if calls % 3:
            detections = engine.detect(frame)
            assert detections and detections == reference.detect(image)
            continue
        with pytest.raises(OutOfMemory, match=r'^out of memory in detect on cpu: CUDA out of '
                                              r'memory \(injected') as caught:
            engine.detect(frame)
        failed.append(index)
        assert not isinstance(caught.value, InputError)
        assert engine._text_cache.model_keys() == set()  # trimmed: text cache and encodings
        assert frame._encodings == {}
        assert engine.out_of_memory_count == len(failed)
        # the lock is free: another thread is served at once, on the same frame
        calls += 1
        assert _in_another_thread(engine.detect, frame) == reference.detect(image)
    assert failed == [2, 4, 6]  # calls 3, 6 and 9; calls 4, 7 and 10 retried those frames


def test_every_kind_of_model_call_turns_out_of_memory_into_an_error(
        tiny_preset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, 'call:1')
    engine = _engine(tiny_preset)
    frame = engine.frame(_images(1)[0])
    box = Detection('cup', 0.5, 20.0, 20.0, 10.0, 10.0)
    calls = [('detect', lambda: engine.detect(frame)),
             ('tags', lambda: engine.tags(frame)),
             ('classify_crops', lambda: engine.classify_crops(frame, [box])),
             ('vqa', lambda: engine.answer(frame, 'is there a cup?')),
             ('caption', lambda: engine.caption(frame)),
             ('caption', lambda: engine.describe(frame))]  # describe's first call: the caption
    for count, (what, call) in enumerate(calls, start=1):
        with pytest.raises(OutOfMemory, match=f'^out of memory in {what} on cpu: '):
            call()
        assert engine.out_of_memory_count == count
    assert set(engine.loaded) == {'detect', 'tags', 'vqa', 'caption'}


def test_out_of_memory_in_a_load_leaves_the_engine_usable(
        tiny_preset, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _images(1)[0]
    reference = _engine(tiny_preset)
    monkeypatch.setenv(INJECT_OOM_ENV, 'load:2')
    engine = _engine(tiny_preset)
    detections = engine.detect(image)                          # load 1
    with pytest.raises(OutOfMemory, match=r"^out of memory loading the tags model '.+' on cpu: "
                                          r'CUDA out of memory'):
        engine.tags(image)                                     # load 2
    assert list(engine.loaded) == ['detect'] and engine.out_of_memory_count == 1
    assert _in_another_thread(engine.detect, image) == detections == reference.detect(image)
    assert engine.tags(image) == reference.tags(image)         # load 3

    monkeypatch.setenv(INJECT_OOM_ENV, 'call:2,load:1')
    failing = _engine(tiny_preset)
    for _ in range(2):
        with pytest.raises(OutOfMemory, match='loading the detect model'):
            failing.load(['detect'], warmup=True)
    assert failing.loaded == {} and failing.out_of_memory_count == 2


@pytest.mark.parametrize('value', ['call', 'call:', 'call:0', 'call:-1', 'call:x', 'frame:2',
                                   'call:2,call:3', 'call:2;load:1', 'call:2,', '3'])
def test_a_malformed_injection_is_an_input_error_at_construction(
        tiny_preset, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, value)
    with pytest.raises(InputError, match=f'{INJECT_OOM_ENV}=.*expected call:N, load:N'):
        _engine(tiny_preset)


def test_injection_values() -> None:
    assert parse_inject_oom(None) == parse_inject_oom(' ') == {'call': 0, 'load': 0}
    assert parse_inject_oom(' load:1 , call:12 ') == {'call': 12, 'load': 1}


# --- model replacement ------------------------------------------------------------------------

def test_replace_model_swaps_in_the_new_model(tiny_preset, other_detector: str) -> None:
    images = _images(3)
    engine = _engine(tiny_preset)
    original = engine.model_ids['detect']
    before = [engine.detect(image) for image in images]
    old_key = engine.backend('detect').key
    engine.replace_model('detect', other_detector)
    assert engine.model_ids['detect'] == engine.loaded['detect'] == other_detector
    assert old_key not in engine._text_cache.model_keys()  # the old model's embeddings dropped
    after = [engine.detect(image) for image in images]
    fresh = _engine(tiny_preset, detector_model=other_detector)
    assert after == [fresh.detect(image) for image in images]
    assert after != before

    engine.replace_model('detect', original, warmup=True)  # the warm-up encodes the vocabulary
    assert engine._text_cache.model_keys() == {engine.backend('detect').key}
    assert [engine.detect(image) for image in images] == before


def test_replacing_a_model_not_loaded_yet_only_records_it(tiny_preset,
                                                          other_detector: str) -> None:
    image = _images(1)[0]
    engine = _engine(tiny_preset)
    engine.replace_model('detect', other_detector)
    assert engine.loaded == {} and engine.model_ids['detect'] == other_detector
    fresh = _engine(tiny_preset, detector_model=other_detector)
    assert engine.detect(image) == fresh.detect(image)


def test_the_old_model_serves_while_the_new_one_loads(tiny_preset, other_detector: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image = _images(1)[0]
    engine = _engine(tiny_preset)
    old = engine.detect(image)
    started, proceed = threading.Event(), threading.Event()
    real_load = loading.load_hf_model

    def paused_load(model_class, model_id: str, *args, **kwargs):
        if model_id == other_detector:  # the new model's load waits until the test says go
            started.set()
            proceed.wait(WAIT_S)
        return real_load(model_class, model_id, *args, **kwargs)

    monkeypatch.setattr(loading, 'load_hf_model', paused_load)
    replacer = threading.Thread(target=engine.replace_model, args=('detect', other_detector),
                                daemon=True)
    replacer.start()
    try:
        assert started.wait(WAIT_S)
        # The load is under way: detect is served, by the old model, before it ends.
        assert _in_another_thread(engine.detect, image) == old
        assert engine.model_ids['detect'] != other_detector
    finally:
        proceed.set()
        replacer.join(WAIT_S)
    assert not replacer.is_alive() and engine.model_ids['detect'] == other_detector
    fresh = _engine(tiny_preset, detector_model=other_detector)
    assert engine.detect(image) == fresh.detect(image)


def test_a_failed_replacement_keeps_the_old_model(tiny_preset, other_detector: str, tmp_path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    image = _images(1)[0]
    engine = _engine(tiny_preset)
    old, model_id = engine.detect(image), engine.model_ids['detect']
    old_key = engine.backend('detect').key
    with pytest.raises(ModelLoadError, match='does not exist'):
        engine.replace_model('detect', str(tmp_path / 'missing'))
    assert engine.model_ids['detect'] == model_id and engine.detect(image) == old
    assert old_key in engine._text_cache.model_keys()

    monkeypatch.setenv(INJECT_OOM_ENV, 'load:2,call:2')
    engine = _engine(tiny_preset)
    assert engine.detect(image) == old                         # load 1, call 1
    with pytest.raises(OutOfMemory, match=r"^out of memory loading the detect model '.+other"):
        engine.replace_model('detect', other_detector)         # load 2
    assert engine.model_ids['detect'] == model_id
    warm_up_failed = "^out of memory in the warm-up of the detect model '.+other.+' on cpu: "
    with pytest.raises(OutOfMemory, match=warm_up_failed):
        engine.replace_model('detect', other_detector, warmup=True)  # load 3, call 2
    assert engine.model_ids['detect'] == model_id and engine.loaded['detect'] == model_id
    assert _in_another_thread(engine.detect, image) == old     # call 3


def test_replace_model_refuses_bad_arguments(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    for capability, model_id in (('fly', 'x'), ('detect', ''), ('detect', '  '),
                                 ('detect', None)):
        with pytest.raises(InputError):
            engine.replace_model(capability, model_id)


def test_model_for_gives_the_model_a_preset_names(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    assert engine.model_for('detect') == engine.model_ids['detect']
    assert engine.model_for('tags', preset='default') == 'ViT-B-32:laion2b_s34b_b79k'
    assert engine.model_for('vqa', preset=str(tiny_preset)) == str((tiny_preset / 'vqa').resolve())
    assert engine.model_for('caption', override='/models/blip') == '/models/blip'
    for call in (lambda: engine.model_for('fly'), lambda: engine.model_for('detect', 'nope')):
        with pytest.raises(InputError):
            call()
