"""OmDet-Turbo detection on tiny real models, against transformers' own post-processing."""

import contextlib
import functools
import re
from typing import Iterator

from detection_checks import assert_same, assert_well_formed, rows
import numpy as np
import pytest
from tiny_models import build_omdet_turbo
import torch
import transformers

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError

RNG = np.random.default_rng(5)
THRESHOLD = 0.5  # the tiny model's scores lie around 0.5
NMS_IOU = 0.5    # the processor's default, which the backend keeps
SHAPES = [(40, 70), (64, 48), (30, 90)]
LABEL_SETS = [['cup', 'Red car', 'dog'], ['person', 'table', 'green plant', 'door', 'cat'],
              ['cup', 'dog']]


def _image(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def omdet_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the tiny OmDet-Turbo, and a copy whose boxes all have zero width."""
    root = tmp_path_factory.mktemp('omdet_turbo')
    models = {'plain': build_omdet_turbo(root / 'plain'),
              'flat': build_omdet_turbo(root / 'flat', seed=1)}
    flat = transformers.OmDetTurboForObjectDetection.from_pretrained(str(models['flat']))
    with torch.no_grad():  # log-odds of the width: sigmoid(-200) is 0 in float32
        flat.decoder.decoder_bbox_head[-1].layers[-1].bias[2] = -200.0
    flat.save_pretrained(str(models['flat']))
    return models


def _engine(folder) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset='default', detector_model=str(folder),
                                         device='cpu'))


@functools.lru_cache(maxsize=None)
def _reference_model(folder) -> tuple:
    model = transformers.OmDetTurboForObjectDetection.from_pretrained(str(folder)).eval()
    return model, transformers.AutoProcessor.from_pretrained(str(folder))


def _post_processed(folder, image: np.ndarray, labels: list[str],
                    settings: tuple = ((THRESHOLD, NMS_IOU),)) -> list[dict]:
    """Run the processor, the model and its post-processing at each (threshold, NMS IoU)."""
    model, processor = _reference_model(folder)
    inputs = processor(images=image, text=labels, return_tensors='pt')
    with torch.inference_mode():
        outputs = model(**inputs)
    return [processor.post_process_grounded_object_detection(
        outputs, text_labels=labels, threshold=threshold, nms_threshold=nms_threshold,
        target_sizes=[image.shape[:2]])[0] for threshold, nms_threshold in settings]


def _reference(result: dict, height: int, width: int) -> list[tuple]:
    """(label, score, cx, cy, w, h) of a result, clipped to the image, without empty boxes."""
    expected = []
    for box, score, label in zip(result['boxes'], result['scores'], result['text_labels']):
        x0, x1 = (float(v) for v in box[0::2].clamp(0, width))
        y0, y1 = (float(v) for v in box[1::2].clamp(0, height))
        if x1 - x0 > 0 and y1 - y0 > 0:
            expected.append((label, float(score), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0,
                             y1 - y0))
    return expected


@contextlib.contextmanager
def calls(*modules: torch.nn.Module) -> Iterator[list[str]]:
    """Record the name of each module's class at each of its forward calls in the block."""
    names: list[str] = []
    handles = [module.register_forward_hook(
        lambda module, *_: names.append(type(module).__name__)) for module in modules]
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()


def test_detections_equal_transformers_post_processing(omdet_models) -> None:
    folder = omdet_models['plain']
    engine = _engine(folder)
    labels_found, clipped, thresholded, suppressed = set(), 0, 0, 0
    for height, width in SHAPES:
        image = _image(height, width)
        frame = engine.frame(image)
        for labels in LABEL_SETS:
            found = rows(engine.detect(frame, labels, threshold=THRESHOLD))
            result, unthresholded, unsuppressed = _post_processed(
                folder, image, labels, ((THRESHOLD, NMS_IOU), (0.0, NMS_IOU), (THRESHOLD, 1.0)))
            expected = _reference(result, height, width)
            assert expected, 'no box above the threshold: the check would be empty'
            assert_same(found, expected, box_atol=1e-3)
            assert [row[1] for row in found] == sorted((row[1] for row in found), reverse=True)
            labels_found |= {row[0] for row in found}
            clipped += sum(min(cx - w / 2, cy - h / 2) < 1e-3 or cx + w / 2 > width - 1e-3
                           or cy + h / 2 > height - 1e-3 for _, _, cx, cy, w, h in found)
            # The threshold and the processor's NMS both take boxes away here.
            thresholded += len(unthresholded['scores']) > len(expected)
            suppressed += len(unsuppressed['scores']) > len(expected)
    assert len(labels_found) > 3 and clipped and thresholded and suppressed
    assert 'Red car' in labels_found  # labels come back as asked, not as tokenized


def test_boxes_of_no_width_are_dropped(omdet_models) -> None:
    folder = omdet_models['flat']
    image = _image(40, 70)
    theirs = _post_processed(folder, image, LABEL_SETS[0])[0]['boxes']
    assert len(theirs) and bool((theirs[:, 2] == theirs[:, 0]).all())
    assert _engine(folder).detect(image, LABEL_SETS[0], threshold=THRESHOLD) == []


def test_image_once_per_frame_and_text_once_per_label(omdet_models) -> None:
    engine = _engine(omdet_models['plain'])
    model = engine.backend('detect').model
    language = model.language_backbone
    frame = engine.frame(_image(40, 70))
    with calls(model.vision_backbone, model.encoder, language, model.decoder) as names:
        first = engine.detect(frame, ['cup', 'dog'], threshold=THRESHOLD)
        # The image, the labels' batch, the task prompt, then the decoder.
        assert names == ['OmDetTurboVisionBackbone', 'OmDetTurboHybridEncoder',
                         'OmDetTurboLanguageBackbone', 'OmDetTurboLanguageBackbone',
                         'OmDetTurboDecoder']
        names.clear()
        assert engine.detect(frame, ['cup', 'dog'], threshold=THRESHOLD) == first
        assert names == ['OmDetTurboDecoder']
        names.clear()
        engine.detect(frame, ['dog', 'cat'], threshold=THRESHOLD)  # a new label, a new prompt
        assert names == ['OmDetTurboLanguageBackbone', 'OmDetTurboLanguageBackbone',
                         'OmDetTurboDecoder']
        names.clear()
        engine.detect(engine.frame(_image(64, 48)), ['cup', 'dog'], threshold=THRESHOLD)
        assert names == ['OmDetTurboVisionBackbone', 'OmDetTurboHybridEncoder',
                         'OmDetTurboDecoder']
    sizes: list[int] = []
    handle = language.register_forward_hook(lambda _m, args, _o: sizes.append(len(args[0])))
    try:
        engine.detect(frame, ['cup', 'bottle', 'phone'], threshold=THRESHOLD)
    finally:
        handle.remove()
    assert sizes == [2, 1]  # the two new labels in one batch, then the new prompt


def test_a_label_too_long_is_refused(omdet_models) -> None:
    folder = omdet_models['plain']
    engine = _engine(folder)
    label = ' '.join(['red'] * 80)  # 80 words + [BOS] + [EOS]
    message = f'label too long: 82 tokens, {folder} takes at most 77'
    with pytest.raises(InputError, match=re.escape(message)):
        engine.detect(engine.frame(_image(40, 70)), ['cup', label], threshold=THRESHOLD)


def test_too_many_labels_for_the_task_prompt_are_refused(omdet_models) -> None:
    folder = omdet_models['plain']
    engine = _engine(folder)
    labels = [f'{colour} {thing}' for colour in ('red', 'green', 'blue', 'yellow')
              for thing in ('cup', 'dog', 'cat', 'chair', 'table', 'car', 'book')][:25]
    # [BOS] detect, 25 x (2 words, then a comma or the final '.'), [EOS]; 'detect' is [UNK]
    message = f'too many labels: their task prompt is 78 tokens, {folder} takes at most 77'
    frame = engine.frame(_image(40, 70))
    with pytest.raises(InputError, match=re.escape(message)):
        engine.detect(frame, labels, threshold=THRESHOLD)
    assert engine.detect(frame, labels[:24], threshold=0.0)  # 75 tokens fit


def test_engine_detects_with_omdet_turbo(omdet_models) -> None:
    engine = _engine(omdet_models['plain'])
    frame = engine.frame(_image(40, 70))
    detections = engine.detect(frame, threshold=0.0)
    assert_well_formed(detections, engine.labels, 70, 40)
    asked = ['Red car', 'dog']
    assert {d.label for d in engine.detect(frame, asked, threshold=0.0)} <= set(asked)
