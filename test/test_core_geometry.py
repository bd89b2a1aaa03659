"""Box geometry: network boxes to source pixels, by formula and end to end through the engine."""

import math

import numpy as np
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.geometry import boxes_to_pixels, PAD, STRETCH

SIZES = [(48, 80), (90, 50), (64, 64), (33, 121)]  # (height, width): wide, tall, square, odd


@pytest.mark.parametrize('height, width', SIZES)
def test_stretch_scales_x_by_width_and_y_by_height(height: int, width: int) -> None:
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]])
    expected = boxes * [width, height, width, height]
    np.testing.assert_allclose(boxes_to_pixels(boxes, height, width, STRETCH), expected)


@pytest.mark.parametrize('height, width', SIZES)
def test_pad_scales_by_the_longer_side(height: int, width: int) -> None:
    side = max(height, width)
    boxes = np.array([[0.2, 0.2, 0.1, 0.1], [0.3, 0.25, 0.2, 0.3]]) * min(height, width) / side
    np.testing.assert_allclose(boxes_to_pixels(boxes, height, width, PAD), boxes * side)


def test_boxes_are_clipped_to_the_image() -> None:
    # 100 wide, 50 high, padded to 100 x 100: this box spans y 40..80, the image ends at 50.
    clipped = boxes_to_pixels(np.array([[0.95, 0.6, 0.2, 0.4]]), 50, 100, PAD)
    np.testing.assert_allclose(clipped, [[92.5, 45.0, 15.0, 10.0]])
    with pytest.raises(ValueError):
        boxes_to_pixels(clipped, 50, 100, 'crop')


def _known_boxes(count: int, extent: float) -> torch.Tensor:
    """
    Return boxes (cx, cy, w, h fractions) on a grid inside the square [0, extent]².

    They are apart (so none is a duplicate of another) and have distinct centre x values.
    """
    index = torch.arange(count, dtype=torch.float32)
    side = math.isqrt(count)
    row, column = index // side, index % side
    grid = [0.1 + 0.4 * column / side + 0.01 * row, 0.1 + 0.4 * row / side,
            0.03 + 0.005 * (index % 3), 0.03 + 0.005 * (index % 2)]
    return extent * torch.stack(grid, dim=1)


@pytest.mark.parametrize('height, width', SIZES)
@pytest.mark.parametrize('model_key, fit', [('detector', STRETCH), ('detector_v2', PAD)])
def test_known_network_boxes_become_known_pixel_boxes(tiny_models: dict, model_key: str,
                                                      fit: str, height: int, width: int) -> None:
    engine = PerceptionEngine(EngineConfig(detector_model=str(tiny_models[model_key]),
                                           labels=['cup'], detection_threshold=0.0, device='cpu'))
    model = engine.backend('detect').model
    # With padding, the image covers only [0, short/long side] of the square along one axis.
    extent = 1.0 if fit == STRETCH else min(height, width) / max(height, width)
    targets = _known_boxes(model.box_bias.shape[0], extent)
    with torch.no_grad():  # network output = sigmoid(box_head + box_bias) = targets
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
        model.box_bias.copy_(torch.logit(targets))
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    detections = engine.detect(image)
    scale = [width, height, width, height] if fit == STRETCH else [max(height, width)] * 4
    expected = sorted(tuple(value * factor for value, factor in zip(box, scale))
                      for box in targets.tolist())
    got = sorted((d.center_x, d.center_y, d.size_x, d.size_y) for d in detections)
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_overlapping_boxes_of_one_label_are_reported_once(tiny_models: dict) -> None:
    engine = PerceptionEngine(EngineConfig(detector_model=str(tiny_models['detector']),
                                           labels=['cup'], detection_threshold=0.0, device='cpu'))
    model = engine.backend('detect').model
    with torch.no_grad():  # every patch predicts the same box
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
        model.box_bias.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.2, 0.2])).expand_as(
            model.box_bias))
    image = np.zeros((40, 60, 3), np.uint8)
    [single] = engine.detect(image)
    assert (single.center_x, single.center_y) == pytest.approx((30.0, 20.0))
    assert len(engine.detect(image, labels=['cup', 'dog'])) <= 2
