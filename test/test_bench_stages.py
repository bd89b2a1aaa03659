"""The bench's stage timing: exclusive per stage, on the backends' own steps, undone after."""

import time

import numpy as np
import pytest

from vlm_perception.bench import command, stages
from vlm_perception.core.engine import EngineConfig, PerceptionEngine


def test_nested_stages_count_once() -> None:
    timer = stages.StageTimer()
    with timer.request():
        time.sleep(0.02)
        with timer.stage('image encoder'):
            time.sleep(0.03)
            with timer.stage('preprocessing'):
                time.sleep(0.01)
    sample = timer.samples[0]
    assert sample['preprocessing'] == pytest.approx(0.01, abs=0.008)
    assert sample['image encoder'] == pytest.approx(0.03, abs=0.008)
    assert sample[stages.REQUEST] == pytest.approx(0.02, abs=0.008)
    assert timer.summary()['total_ms']['p50'] == pytest.approx(60, abs=15)


def test_timed_requests_time_the_backends_steps_and_leave_them_as_they_were(
        tiny_preset) -> None:
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    engine.load(['detect', 'tags'], warmup=True)
    tagger = engine.backend('tags')
    preprocess = tagger.preprocess
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    result = stages.timed_requests(engine, 'tags', frames, lambda frame: engine.tags(frame))
    assert result['requests'] == 2  # the first one warms up
    assert {'preprocessing', 'image encoder'} <= set(result['stages_ms'])
    assert 'text encoder' not in result['stages_ms']  # the vocabulary was cached by the warm-up
    assert tagger.preprocess is preprocess and 'encode_image' not in vars(tagger)
    words = iter(['table', 'car', 'book'])  # a label never seen, each request
    new_labels = stages.timed_requests(engine, 'tags', frames,
                                       lambda frame: engine.tags(frame, [next(words)]))
    assert 'text encoder' in new_labels['stages_ms']  # new text, encoded once per request


def test_table_and_plot(tmp_path) -> None:
    timer = stages.StageTimer()
    for _ in range(2):
        with timer.request(), timer.stage('image encoder'):
            time.sleep(0.001)
    figures = {'capabilities': {'detect': timer.summary()},
               'comparisons': {'labels_12_vs_1': 1.05, 'questions_4_vs_1': 1.7}}
    text = command.table(figures)
    assert 'labels_12_vs_1: 1.05 (target <= 1.1: met)' in text
    assert 'questions_4_vs_1: 1.70 (target <= 1.5: MISSED)' in text
    pytest.importorskip('matplotlib')
    assert command.plot(figures, tmp_path / 'stages.png').stat().st_size > 1000
