"""The perception engine end to end on tiny real models: capabilities, caches, bad input."""

import contextlib
import math
import threading
from typing import Iterator

import numpy as np
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, Frame, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.types import Answer, Detection, LabelScore, SceneDescription

RNG = np.random.default_rng(7)


def _image(height: int = 40, width: int = 70) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _engine(tiny_preset, **overrides) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(**{'preset': str(tiny_preset), 'device': 'cpu',
                                            **overrides}))


@contextlib.contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list]:
    """Record the batch size of every forward call of a module while the block runs."""
    calls = []

    def record(_module, args, kwargs, _output) -> None:
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        calls.append(tensors[0].shape[0] if tensors else None)

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope='module')
def engine(tiny_preset) -> PerceptionEngine:
    return _engine(tiny_preset)


def test_models_load_lazily_and_only_for_capabilities_in_use(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    assert engine.loaded == {}
    engine.tags(_image())
    assert list(engine.loaded) == ['tags']
    engine.load(['caption'], warmup=True)
    assert set(engine.loaded) == {'tags', 'caption'}
    assert engine.device == 'cpu' and engine.dtype == 'fp32'


def test_every_capability_end_to_end(engine: PerceptionEngine) -> None:
    frame = engine.frame(_image(40, 70))
    detections = engine.detect(frame, threshold=0.0)
    assert detections and all(isinstance(d, Detection) for d in detections)
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    for detection in detections:
        assert detection.label in engine.labels and 0.0 <= detection.score <= 1.0
        x0, y0, x1, y1 = detection.box
        assert -1e-3 <= x0 <= x1 <= 70 + 1e-3 and -1e-3 <= y0 <= y1 <= 40 + 1e-3
    tags = engine.tags(frame, top_k=3)
    assert len(tags) == 3 and all(isinstance(t, LabelScore) for t in tags)
    assert [t.score for t in tags] == sorted((t.score for t in tags), reverse=True)
    assert math.isclose(sum(t.score for t in engine.tags(frame, top_k=None)), 1.0, rel_tol=1e-4)
    answer = engine.answer(frame, 'What colour is the cup?')
    assert isinstance(answer, Answer) and isinstance(answer.answer, str)
    assert 0.0 <= answer.confidence <= 1.0
    caption = engine.caption(frame)
    assert isinstance(caption, str) and caption
    assert engine.caption(frame, prompt='a photo of').startswith('a photo of')
    scene = engine.describe(frame, question='Is there a cup?')
    assert isinstance(scene, SceneDescription) and scene.caption == caption
    assert scene.summary.startswith(caption[:1].upper() + caption[1:10])
    assert set(scene.to_dict()) == {'caption', 'tags', 'detections', 'summary', 'answer'}
    only_tags = engine.describe(frame, caption=False, detect=False)
    assert only_tags.caption == '' and only_tags.detections == [] and only_tags.tags


@pytest.mark.parametrize('model_key', ['vqa_vilt', 'vqa_blip'])
def test_both_vqa_architectures_answer(tiny_preset, tiny_models: dict, model_key: str) -> None:
    engine = _engine(tiny_preset, vqa_model=str(tiny_models[model_key]))
    answer = engine.answer(_image(), 'is there a dog?')
    assert answer.question == 'is there a dog?' and 0.0 <= answer.confidence <= 1.0
    if model_key == 'vqa_vilt':
        assert answer.answer in engine.backend('vqa').config.id2label.values()


def test_owlv2_detector_through_the_engine(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models['detector_v2']))
    assert engine.detect(_image(30, 90), labels='cup, red circle', threshold=0.0)


def test_owlv2_boxes_in_the_padding_are_dropped_not_kept_with_no_area(
        tiny_preset, tiny_models: dict) -> None:
    # OWLv2 pads a wide image at the bottom: patches there predict boxes that the clipping to
    # the image flattens to zero height, and NMS keeps those (IoU 0/0), so all of them came out.
    engine = _engine(tiny_preset, detector_model=str(tiny_models['detector_v2']))
    detections = engine.detect(_image(20, 90), labels='cup, red circle', threshold=0.0)
    assert detections
    flat = [d for d in detections if d.size_x <= 0 or d.size_y <= 0]
    assert not flat, f'{len(flat)} of {len(detections)} boxes have no area'


def test_label_embeddings_are_cached_per_vocabulary_not_per_frame(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    text_model = engine.backend('detect').model.owlvit.text_model
    vocabulary_size = len(engine.labels)
    with count_calls(text_model) as calls:
        for _ in range(3):
            engine.detect(_image())
        assert calls == [vocabulary_size]          # one batch, on the first frame only
        engine.set_labels(['cup', 'green bottle'])  # 'cup' is in the old vocabulary
        engine.detect(_image())
        engine.detect(_image(), labels=['cup', 'green bottle', 'red circle'])
        engine.detect(_image(), labels=['red circle'])
    assert calls == [vocabulary_size, 1, 1]  # only new labels are encoded

    clip = engine.backend('tags').model
    with count_calls(clip.token_embedding) as calls:
        for _ in range(3):
            engine.tags(_image())
        engine.tags(_image(), labels=['kitchen', 'street'])
        engine.tags(_image(), labels=['street', 'kitchen'])
    assert calls == [2, 2]  # vocabulary (now the two labels), then the two new tags


def test_each_model_encodes_a_frame_once_whatever_the_requests(tiny_preset,
                                                               tiny_models: dict) -> None:
    engine = _engine(tiny_preset)
    backends = {capability: engine.backend(capability) for capability in
                ('detect', 'tags', 'vqa', 'caption')}
    encoders = [backends['detect'].model.owlvit.vision_model, backends['tags'].model.visual,
                backends['vqa'].model.vision_model, backends['caption'].model.vision_model]
    with contextlib.ExitStack() as stack:
        counters = [stack.enter_context(count_calls(encoder)) for encoder in encoders]
        frame = engine.frame(_image())
        engine.detect(frame)
        engine.detect(frame, labels=['cup', 'yellow triangle'], threshold=0.0)
        engine.tags(frame)
        engine.tags(frame, labels=['indoor', 'outdoor'])
        for question in ('is there a cup?', 'how many dogs?', 'what colour is the wall?'):
            engine.answer(frame, question)
        engine.caption(frame)
        engine.caption(frame, prompt='a picture of')
        engine.describe(frame, question='is it red?')
        assert [len(counter) for counter in counters] == [1, 1, 1, 1]
        engine.describe(engine.frame(_image()), question='is it red?')
        assert [len(counter) for counter in counters] == [2, 2, 2, 2]

    vilt = _engine(tiny_preset, vqa_model=str(tiny_models['vqa_vilt']))
    patch_embedding = vilt.backend('vqa').model.vilt.embeddings.patch_embeddings
    with count_calls(patch_embedding) as calls:
        frame = vilt.frame(_image())
        for question in ('is there a cup?', 'how many dogs?', 'what colour is the wall?'):
            vilt.answer(frame, question)
    assert len(calls) == 1


def test_frame_encodings_go_with_the_frame(engine: PerceptionEngine) -> None:
    frame = engine.frame(_image())
    engine.tags(frame)
    assert engine.frame(frame) is frame
    assert len(frame._encodings) == 1
    assert isinstance(engine.frame(_image()), Frame)


def test_set_labels_cleans_and_rejects(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    assert engine.set_labels(['  red   cup ', 'dog', 'dog', '']) == ['red cup', 'dog']
    assert engine.labels == ['red cup', 'dog'] and engine.tag_labels == ['red cup', 'dog']
    assert {d.label for d in engine.detect(_image(), threshold=0.0)} <= {'red cup', 'dog'}
    for bad in ([], ['', '  '], 'x' * 600, [3]):
        with pytest.raises(InputError):
            engine.set_labels(bad)
    assert engine.set_tag_labels(['indoor', 'outdoor']) == ['indoor', 'outdoor']
    assert engine.labels == ['red cup', 'dog']


@pytest.mark.parametrize('call', [
    lambda e, f: e.detect(f, labels=[]),
    lambda e, f: e.detect(f, labels=',, ,'),
    lambda e, f: e.detect(f, threshold=1.5),
    lambda e, f: e.detect(f, threshold=float('nan')),
    lambda e, f: e.tags(f, top_k=0),
    lambda e, f: e.answer(f, ''),
    lambda e, f: e.answer(f, '   '),
    lambda e, f: e.answer(f, 'why ' * 200),
    lambda e, f: e.caption(f, prompt='a ' * 300),
    lambda e, f: e.describe(f, question='x' * 513),
    lambda e, f: e.frame(np.zeros((0, 0, 3), np.uint8)),
    lambda e, f: e.detect(np.zeros((4, 4, 2), np.uint8)),
    lambda e, f: e.load(['fly']),
])
def test_bad_input_is_an_input_error(engine: PerceptionEngine, call) -> None:
    with pytest.raises(InputError):
        call(engine, engine.frame(_image()))


@pytest.mark.parametrize('overrides', [{'device': 'tpu'}, {'dtype': 'int8'}, {'labels': []},
                                       {'detection_threshold': -0.1}, {'preset': 'nonexistent'}])
def test_bad_configuration_is_an_input_error(tiny_preset, overrides: dict) -> None:
    with pytest.raises(InputError):
        _engine(tiny_preset, **overrides)


def test_grey_rgba_and_16_bit_frames_are_accepted(engine: PerceptionEngine) -> None:
    for image in (_image()[:, :, 0], np.dstack([_image(), _image()[:, :, :1]]),
                  _image().astype(np.uint16) * 257):
        assert engine.tags(image)


def test_nan_scores_never_leave_the_engine(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, vqa_model=str(tiny_models['vqa_vilt']))
    with torch.no_grad():
        engine.backend('detect').model.class_head.logit_shift.bias.fill_(float('nan'))
        engine.backend('tags').model.logit_scale.fill_(float('nan'))
        engine.backend('vqa').model.classifier[-1].bias.fill_(float('nan'))
    frame = engine.frame(_image())
    scores = [d.score for d in engine.detect(frame, threshold=0.0)]
    scores += [t.score for t in engine.tags(frame, top_k=None)]
    scores.append(engine.answer(frame, 'is it red?').confidence)
    assert all(math.isfinite(score) and 0.0 <= score <= 1.0 for score in scores)


def test_crops_of_detections_are_classified(engine: PerceptionEngine) -> None:
    frame = engine.frame(_image(50, 60))
    detections = engine.detect(frame, threshold=0.0)[:4]
    classes = engine.classify_crops(frame, detections, labels=['cup', 'dog'])
    assert len(classes) == len(detections) and all(c.label in ('cup', 'dog') for c in classes)
    assert engine.classify_crops(frame, []) == []


def test_bf16_runs_on_cpu(tiny_preset) -> None:
    engine = _engine(tiny_preset, dtype='bf16')
    frame = engine.frame(_image())
    assert engine.dtype == 'bf16'
    assert engine.tags(frame) and isinstance(engine.detect(frame, threshold=0.0), list)


def test_two_threads_share_one_engine(engine: PerceptionEngine) -> None:
    errors = []

    def work(seed: int) -> None:
        try:
            for _ in range(3):
                frame = engine.frame(np.random.default_rng(seed).integers(
                    0, 256, (32, 48, 3), dtype=np.uint8))
                engine.detect(frame)
                engine.answer(frame, 'is there a cup?')
        except Exception as error:  # noqa: B902 (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', ['auto', 'bf16', 'fp32'])
def test_cuda_end_to_end(tiny_preset, tiny_models: dict, dtype: str) -> None:
    for vqa, detector in (('vqa_blip', 'detector'), ('vqa_vilt', 'detector_v2')):
        engine = _engine(tiny_preset, device='cuda', dtype=dtype,
                         vqa_model=str(tiny_models[vqa]),
                         detector_model=str(tiny_models[detector]))
        assert engine.device == 'cuda:0'
        assert engine.dtype == ('fp16' if dtype == 'auto' else dtype)
        scene = engine.describe(_image(45, 77), question='is there a cup?')
        scores = [d.score for d in scene.detections] + [t.score for t in scene.tags]
        assert scene.caption and scene.detections and scene.answer is not None
        assert all(math.isfinite(s) for s in scores + [scene.answer.confidence])
        model = engine.backend('detect').model
        assert next(model.parameters()).device.type == 'cuda'


def test_every_registered_backend_keeps_its_capability_contract(tiny_preset) -> None:
    from importlib import import_module

    from vlm_perception.core.backends import REGISTRY
    from vlm_perception.core.backends.contracts import CONTRACTS

    for (capability, _), entry in REGISTRY.items():
        module_name, class_name = entry.split(':')
        backend_class = getattr(import_module(f'vlm_perception.core.backends.{module_name}'),
                                class_name)
        methods = [name for name in dir(CONTRACTS[capability])
                   if not name.startswith('_') and callable(getattr(CONTRACTS[capability], name))]
        assert methods and all(callable(getattr(backend_class, name, None)) for name in methods)
    engine = _engine(tiny_preset)
    for capability, contract in CONTRACTS.items():
        assert isinstance(engine.backend(capability), contract)


def test_unload_drops_the_models_and_they_load_again_on_use(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    image = _image()
    before = engine.detect(image, threshold=0.0)
    engine.unload()
    assert engine.loaded == {}
    assert engine.detect(image, threshold=0.0) == before
    assert list(engine.loaded) == ['detect']
