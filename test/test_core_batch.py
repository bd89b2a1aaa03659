"""Batched detection (engine.detect_many): one image-encoder call, the results of detect."""

import contextlib
from typing import Iterator

import numpy as np
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.types import Detection

SIZES = [(40, 70), (64, 64), (30, 90)]  # height, width: the processor squares each
TOLERANCE = 1e-5


def _images(seed: int = 3, sizes: list[tuple[int, int]] = SIZES) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]


def _engine(tiny_preset, **overrides) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu', **overrides))


@contextlib.contextmanager
def batch_sizes(module: torch.nn.Module) -> Iterator[list[int]]:
    """Record the batch size of every forward call of module while the block runs."""
    sizes: list[int] = []

    def record(_module, args, kwargs, _output) -> None:
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        sizes.append(tensors[0].shape[0])

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def assert_same(batched: list[Detection], single: list[Detection]) -> None:
    """Assert the same detections in the same order, scores and boxes within TOLERANCE."""
    assert [d.label for d in batched] == [d.label for d in single]
    for one, other in zip(batched, single):
        assert one.score == pytest.approx(other.score, abs=TOLERANCE)
        assert one.box == pytest.approx(other.box, abs=TOLERANCE, rel=TOLERANCE)


@pytest.mark.parametrize('detector', ['detector', 'detector_v2'])
def test_frames_of_several_sizes_are_encoded_in_one_call_and_detect_as_alone(
        tiny_preset, tiny_models: dict, detector: str) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models[detector]))
    model = engine.backend('detect').model
    vision = (model.owlvit if detector == 'detector' else model.owlv2).vision_model
    labels = ['cup', 'red circle', 'dog']
    single = [engine.detect(image, labels, threshold=0.0) for image in _images()]
    frames = [engine.frame(image) for image in _images()]
    with batch_sizes(vision) as sizes:
        batched = engine.detect_many(frames, labels, threshold=0.0)
        assert sizes == [len(SIZES)]  # one call for all the frames
        again = engine.detect_many(frames, labels, threshold=0.0)
        engine.detect(frames[1], labels, threshold=0.0)
    assert sizes == [len(SIZES)]  # the encodings stay on the frames
    assert len(batched) == len(SIZES) and all(batched)
    for found, alone, repeated in zip(batched, single, again):
        assert_same(found, alone)
        assert repeated == found


def test_only_frames_not_encoded_yet_are_encoded(tiny_preset) -> None:
    engine = _engine(tiny_preset)
    vision = engine.backend('detect').model.owlvit.vision_model
    frames = [engine.frame(image) for image in _images(5)]
    engine.detect(frames[0])
    with batch_sizes(vision) as sizes:
        engine.detect_many(frames)  # frames[0] keeps its own encoding
        engine.detect_many([frames[0], frames[0]])
        assert engine.detect_many([]) == []
    assert sizes == [len(SIZES) - 1]


def test_a_detector_without_batches_runs_once_per_frame(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models['grounding_dino']))
    labels, sizes = ['cup', 'dog'], [(40, 70), (48, 80)]  # tiny backbone: no smaller
    single = [engine.detect(image, labels, threshold=0.0) for image in _images(7, sizes)]
    batched = engine.detect_many(_images(7, sizes), labels, threshold=0.0)
    assert len(batched) == len(single)
    for found, alone in zip(batched, single):
        assert_same(found, alone)
