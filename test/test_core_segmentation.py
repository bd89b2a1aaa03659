"""SAM and SAM2 masks on tiny real models, against transformers' own post-processing; depth."""

import dataclasses
import math
import pathlib

import numpy as np
import pytest
import torch
import transformers

from vlm_perception.core.depth import DepthImage, PinholeCamera, place
from vlm_perception.core.engine import (CAPABILITIES, DEFAULT_CAPABILITIES, EngineConfig,
                                        PerceptionEngine)
from vlm_perception.core.errors import InputError, OutOfMemory
from vlm_perception.core.faults import INJECT_OOM_ENV
from vlm_perception.core.presets import DEFAULT, get_preset, PACKAGED_PRESETS
from vlm_perception.core.types import Detection

FAMILIES = ['segmenter', 'segmenter_sam2']  # tiny_models.BUILDERS: SAM, SAM2
SHAPES = [(40, 70), (64, 48), (30, 90)]  # non-square, landscape and portrait


def _image(height: int, width: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _detections(height: int, width: int) -> list[Detection]:
    """Fractional boxes: one inside, one crossing the top and right edges, a small one."""
    corners = [(0.1 * width + 0.3, 0.2 * height + 0.7, 0.6 * width + 0.2, 0.9 * height - 0.4),
               (0.5 * width - 0.5, -3.2, width + 4.1, 0.5 * height + 0.25),
               (2.5, 3.5, 9.9, 8.1)]
    return [Detection(f'object {index}', 0.5, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
            for index, (x0, y0, x1, y1) in enumerate(corners)]


def _engine(tiny_preset: pathlib.Path, folder: pathlib.Path) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), segmenter_model=str(folder),
                                         device='cpu'))


def _reference(folder: pathlib.Path, image: np.ndarray,
               detections: list[Detection]) -> list[np.ndarray]:
    """Masks from the model, its processor and post_process_masks, cut to each box's pixels."""
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    inputs = processor(images=image, input_boxes=[[list(d.box) for d in detections]],
                       return_tensors='pt')
    with torch.inference_mode():
        outputs = model(**inputs, multimask_output=False)
    sizes = [inputs['original_sizes']]
    if 'reshaped_input_sizes' in inputs:  # SAM pads; SAM2 stretches
        sizes.append(inputs['reshaped_input_sizes'])
    masks = processor.post_process_masks(outputs.pred_masks, *sizes)[0][:, 0].numpy()
    height, width = image.shape[:2]
    cut = []
    for detection, mask in zip(detections, masks):
        x0, y0, x1, y1 = detection.box
        left, right = max(math.floor(x0), 0), min(math.ceil(x1), width)
        top, bottom = max(math.floor(y0), 0), min(math.ceil(y1), height)
        cut.append(mask[top:bottom, left:right].astype(np.uint8) * 255)
    return cut


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('shape', SHAPES, ids=[f'{h}x{w}' for h, w in SHAPES])
def test_masks_equal_transformers_post_processing(tiny_preset, tiny_models: dict, family: str,
                                                  shape: tuple) -> None:
    folder = tiny_models[family]
    image, detections = _image(*shape), _detections(*shape)
    found = _engine(tiny_preset, folder).segment(image, detections)
    expected = _reference(folder, image, detections)
    assert [d.label for d in found] == [d.label for d in detections]
    for mask, reference in zip((d.mask for d in found), expected):
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert mask.shape == reference.shape
        np.testing.assert_array_equal(mask, reference)
    assert any(0 < np.count_nonzero(d.mask) < d.mask.size for d in found)  # not all one value
    assert [(d.label, d.center_x, d.size_y) for d in found] == \
        [(d.label, d.center_x, d.size_y) for d in detections]  # only the mask is added


def test_mask_shape_is_the_clipped_pixel_window(tiny_preset, tiny_models: dict) -> None:
    detection = Detection('cup', 0.9, 60.0, 10.0, 30.5, 5.0)  # x 44.75..75.25, y 7.5..12.5
    assert detection.pixel_window(70, 40) == (44, 7, 70, 13)
    engine = _engine(tiny_preset, tiny_models['segmenter'])
    masked, outside = engine.segment(_image(40, 70), [detection,
                                                      Detection('gone', 0.9, -9.0, 5.0, 4.0, 4.0)])
    assert masked.mask.shape == (6, 26)
    assert outside.mask is None  # no pixel of the box is in the frame


@pytest.mark.parametrize('family', FAMILIES)
def test_a_frame_is_encoded_once_across_segment_calls(tiny_preset, tiny_models: dict,
                                                      family: str) -> None:
    engine = _engine(tiny_preset, tiny_models[family])
    encoder = engine.backend('segment').model.vision_encoder
    calls = []
    handle = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        frame = engine.frame(_image(40, 70))
        detections = _detections(40, 70)
        first = engine.segment(frame, detections)
        again = engine.segment(frame, detections[:1])
        assert len(calls) == 1
        np.testing.assert_array_equal(again[0].mask, first[0].mask)
        engine.segment(_image(40, 70, seed=4), detections)  # another frame, encoded anew
        assert len(calls) == 2
    finally:
        handle.remove()


def test_engine_segment_through_the_slot_table(tiny_preset, tiny_models: dict) -> None:
    assert 'segment' in CAPABILITIES and 'segment' not in DEFAULT_CAPABILITIES
    folder = tiny_models['segmenter']
    engine = _engine(tiny_preset, folder)
    assert engine.model_ids['segment'] == str(folder)
    assert engine.segment(_image(40, 70), []) == [] and engine.loaded == {}  # nothing to load
    engine.load()
    assert 'segment' not in engine.loaded  # off by default
    scene = engine.describe(_image(40, 70), caption=False, tags=False)
    assert scene.detections and all(d.mask is None for d in scene.detections)
    assert 'segment' not in engine.loaded
    engine.load(['segment'], warmup=True)
    assert engine.loaded['segment'] == str(folder)
    image = _image(40, 70)
    scene = engine.describe(image, caption=False, tags=False, segment=True)
    assert all(d.mask is not None for d in scene.detections)
    assert scene.detections == engine.segment(image, engine.detect(image))
    assert 'mask' in scene.detections[0].to_dict() and 'mask' not in \
        engine.detect(image)[0].to_dict()
    with pytest.raises(InputError):
        engine.segment(image, [Detection('cup', 0.5, math.nan, 1.0, 2.0, 2.0)])
    with pytest.raises(InputError):
        engine.segment(image, ['cup'])


def test_out_of_memory_in_segment_is_reported_and_the_engine_goes_on(
        tiny_preset, tiny_models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, 'call:2')  # the 2nd model call fails
    engine = _engine(tiny_preset, tiny_models['segmenter'])
    frame, detections = engine.frame(_image(40, 70)), _detections(40, 70)
    first = engine.segment(frame, detections)
    with pytest.raises(OutOfMemory, match='^out of memory in segment on cpu: '):
        engine.segment(frame, detections)
    assert engine.out_of_memory_count == 1
    assert engine.segment(frame, detections) == first  # encoded again after the trim


@pytest.mark.skipif(not (PACKAGED_PRESETS['shapes'] / 'preset.json').is_file(),
                    reason='shapes preset not built')
def test_a_preset_without_segmenter_falls_back_to_defaults() -> None:
    assert get_preset('shapes').segmenter == DEFAULT.segmenter == 'facebook/sam-vit-base'


# --- depth from the mask (no models) ---------------------------------------------------------

WIDTH, HEIGHT = 160, 120
CAMERA = PinholeCamera.from_values((100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0),
                                   WIDTH, HEIGHT)
BOX = (40, 30, 100, 90)      # left, top, right, bottom pixels (continuous: the box itself)
OBJECT = (40, 30, 62, 60)    # the mask's region: off the box's central half, mostly
NEAR_M, FAR_M, BACKGROUND_M = 1.0, 3.0, 5.0


def _planted(scale: int) -> tuple[Detection, DepthImage]:
    """Return a box at 3 m holding a 1 m object where its mask is; depth at 1 / scale size."""
    left, top, right, bottom = BOX
    detection = Detection('cup', 0.9, (left + right) / 2, (top + bottom) / 2, right - left,
                          bottom - top)
    metres = np.full((HEIGHT, WIDTH), BACKGROUND_M, np.float32)
    metres[top:bottom, left:right] = FAR_M
    mask = np.zeros((bottom - top, right - left), np.uint8)
    o_left, o_top, o_right, o_bottom = OBJECT
    metres[o_top:o_bottom, o_left:o_right] = NEAR_M
    mask[o_top - top:o_bottom - top, o_left - left:o_right - left] = 255
    detection.mask = mask
    # A depth pixel sees the image pixel under its centre (scale 2: the odd ones).
    offset = scale // 2
    return detection, DepthImage(metres[offset::scale, offset::scale])


@pytest.mark.parametrize('scale', [1, 2])
def test_depth_from_the_mask_is_the_objects(scale: int) -> None:
    detection, depth = _planted(scale)
    boxed = dataclasses.replace(detection, mask=None)
    assert place(boxed, depth, CAMERA, WIDTH, HEIGHT, 0.1, 10.0).position[2] == FAR_M
    placement = place(detection, depth, CAMERA, WIDTH, HEIGHT, 0.1, 10.0)
    x, y, z = placement.position
    assert z == NEAR_M
    o_left, o_top, o_right, o_bottom = OBJECT  # the object's extent, not the box's
    assert x == pytest.approx(((o_left + o_right) / 2 - 0.5 - 79.5) / 100 * NEAR_M)
    assert y == pytest.approx(((o_top + o_bottom) / 2 - 0.5 - 59.5) / 100 * NEAR_M)
    assert placement.size == pytest.approx(((o_right - o_left) / 100 * NEAR_M,
                                            (o_bottom - o_top) / 100 * NEAR_M, 0.0))


def test_an_empty_or_misshapen_mask_places_as_the_box() -> None:
    detection, depth = _planted(1)
    boxed = place(dataclasses.replace(detection, mask=None), depth, CAMERA, WIDTH, HEIGHT, 0.1,
                  10.0)
    for mask in (np.zeros_like(detection.mask), detection.mask[:-1]):
        detection.mask = mask
        assert place(detection, depth, CAMERA, WIDTH, HEIGHT, 0.1, 10.0) == boxed


def test_a_mask_over_invalid_depth_places_nothing() -> None:
    detection, depth = _planted(1)
    values = depth.values.copy()
    values[values == NEAR_M] = 0.0  # the sensor saw nothing where the object is
    assert place(detection, DepthImage(values), CAMERA, WIDTH, HEIGHT, 0.1, 10.0) is None
