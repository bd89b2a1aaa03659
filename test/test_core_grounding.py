"""Grounding DINO detection on tiny real models, against transformers' own post-processing."""

import re

from detection_checks import assert_same, assert_well_formed, rows
import numpy as np
import pytest
from tiny_models import build_grounding_dino
import torch
import transformers

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError

RNG = np.random.default_rng(11)
THRESHOLD = 0.3  # the random tiny models score boxes all over 0..1
SHAPES = [(40, 70), (64, 48), (30, 90)]
LABEL_SETS = [['cup', 'Red car', 'dog'], ['person', 'table', 'green plant', 'door', 'cat']]
LONG_LABELS = ['cup', 'person', 'dog', 'chair', 'bottle', 'red car', 'blue book', 'table',
               'phone', 'laptop', 'green plant', 'door']


def _image(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def grounding_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny Grounding DINO (text limit 32), one with a 16-token limit, and an MM one."""
    root = tmp_path_factory.mktemp('grounding')
    models = {'plain': build_grounding_dino(root / 'plain'),
              'short': build_grounding_dino(root / 'short', seed=1, max_text_len=16),
              'mm': build_grounding_dino(root / 'mm', seed=2, mm=True),
              'wide': build_grounding_dino(root / 'wide', seed=3)}
    # The tiny boxes stay near their small anchor boxes, inside the image; widen them so that
    # many cross its border and clipping is checked too.
    wide = transformers.GroundingDinoForObjectDetection.from_pretrained(str(models['wide']))
    for name, parameter in wide.named_parameters(remove_duplicate=False):
        if 'bbox_embed' in name and name.endswith('layers.2.bias'):
            parameter.data[2:] = 3.0  # log-odds added to each box's width and height
    wide.save_pretrained(str(models['wide']))
    return models


def _engine(tiny_preset, folder) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), detector_model=str(folder),
                                         device='cpu'))


def _reference(folder, image: np.ndarray, labels: list[str], threshold: float) -> list[tuple]:
    """(label, score, cx, cy, w, h) from the model, its processor and its post-processing."""
    config = transformers.AutoConfig.from_pretrained(str(folder))
    model = getattr(transformers, config.architectures[0]).from_pretrained(str(folder)).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    height, width = image.shape[:2]
    inputs = processor(images=image, text=labels, return_tensors='pt')  # merges the labels
    assert bool(inputs['pixel_mask'].all())
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(
        outputs, inputs['input_ids'], threshold=threshold, text_threshold=threshold,
        target_sizes=[(height, width)])[0]
    # Each label's tokens, walking the prompt: [CLS] label . label . ... [SEP]
    ids = inputs['input_ids'][0].tolist()
    dot = processor.tokenizer.convert_tokens_to_ids('.')
    spans, position = [], 1
    for label in labels:
        count = len(processor.tokenizer(label.lower(), add_special_tokens=False)['input_ids'])
        spans.append(range(position, position + count))
        assert ids[position + count] == dot
        position += count + 1
    assert position == len(ids) - 1
    probabilities = torch.sigmoid(outputs.logits[0])
    keep = probabilities.max(dim=-1).values > threshold
    expected = []
    for box, score, query in zip(result['boxes'], result['scores'], probabilities[keep]):
        x0, x1 = (float(v) for v in box[0::2].clamp(0, width))
        y0, y1 = (float(v) for v in box[1::2].clamp(0, height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        best = [max(float(query[token]) for token in span) for span in spans]
        label = labels[int(np.argmax(best))]
        expected.append((label, float(score), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    return sorted(expected, key=lambda row: -row[1])


@pytest.mark.parametrize('kind', ['plain', 'mm', 'wide'])
def test_detections_equal_transformers_post_processing(tiny_preset, grounding_models,
                                                       kind: str) -> None:
    folder = grounding_models[kind]
    engine = _engine(tiny_preset, folder)
    clipped = 0
    for height, width in SHAPES:
        image = _image(height, width)
        frame = engine.frame(image)
        for labels in LABEL_SETS:
            found = rows(engine.detect(frame, labels, threshold=THRESHOLD))
            expected = _reference(folder, image, labels, THRESHOLD)
            assert expected, 'no box above the threshold: the check would be empty'
            assert_same(found, expected, box_atol=1e-4)
            assert [row[1] for row in found] == sorted((row[1] for row in found), reverse=True)
            clipped += sum(min(cx - w / 2, cy - h / 2) < 1e-3 or cx + w / 2 > width - 1e-3
                           or cy + h / 2 > height - 1e-3 for _, _, cx, cy, w, h in found)
    assert kind != 'wide' or clipped > 0


def test_labels_past_the_text_limit_go_into_further_prompts(tiny_preset,
                                                            grounding_models) -> None:
    folder = grounding_models['short']
    engine = _engine(tiny_preset, folder)
    backend = engine.backend('detect')
    tokenizer = transformers.AutoProcessor.from_pretrained(str(folder)).tokenizer
    chunks = backend.chunks(LONG_LABELS)
    assert len(chunks) > 1 and [label for chunk in chunks for label in chunk] == LONG_LABELS

    def tokens(labels: list[str]) -> int:
        return len(tokenizer(' '.join(f'{label}.' for label in labels))['input_ids'])

    for chunk, following in zip(chunks, chunks[1:] + [[]]):
        assert tokens(chunk) <= 16
        assert not following or tokens(chunk + following[:1]) > 16  # each chunk is full
    calls = []
    handle = backend.model.register_forward_hook(lambda *_: calls.append(1))
    frame = engine.frame(_image(40, 70))
    try:
        merged = engine.detect(frame, LONG_LABELS, threshold=THRESHOLD)
    finally:
        handle.remove()
    assert len(calls) == len(chunks)
    assert merged and {d.label for d in merged} <= set(LONG_LABELS)
    separately = sorted((d for chunk in chunks
                         for d in engine.detect(frame, chunk, threshold=THRESHOLD)),
                        key=lambda d: -d.score)
    assert_same(rows(merged), rows(separately), box_atol=1e-4)


def test_a_label_too_long_alone_is_refused(tiny_preset, grounding_models) -> None:
    folder = grounding_models['short']
    engine = _engine(tiny_preset, folder)
    label = ' '.join(['red'] * 20)  # 20 words + '.' + [CLS] + [SEP]
    message = f'label too long: 23 tokens, {folder} takes at most 16'
    with pytest.raises(InputError, match=re.escape(message)):
        engine.detect(engine.frame(_image(40, 70)), ['cup', label], threshold=THRESHOLD)


def test_engine_detects_with_grounding_dino(tiny_preset, grounding_models) -> None:
    engine = _engine(tiny_preset, grounding_models['plain'])
    frame = engine.frame(_image(40, 70))
    encodings = []
    backend = engine.backend('detect')
    encode = backend.encode_image
    backend.encode_image = lambda image: encodings.append(1) or encode(image)
    detections = engine.detect(frame, threshold=0.0)
    assert_well_formed(detections, engine.labels, 70, 40)
    asked = ['Red car', 'dog']
    assert {d.label for d in engine.detect(frame, asked, threshold=0.0)} <= set(asked)
    assert len(encodings) == 1  # the frame's preprocessing serves every label set
