"""Comparing detections with a reference post-processing: rows of (label, score, box)."""

import numpy as np

from vlm_perception.core.types import Detection


def rows(detections: list[Detection]) -> list[tuple]:
    """Return (label, score, center_x, center_y, size_x, size_y) per detection."""
    return [(d.label, d.score, d.center_x, d.center_y, d.size_x, d.size_y) for d in detections]


def assert_same(found: list[tuple], expected: list[tuple], box_atol: float) -> None:
    """Assert the same labels in order, scores within 1e-5, boxes within box_atol pixels."""
    assert len(found) == len(expected)
    for ours, theirs in zip(found, expected):
        assert ours[0] == theirs[0]
        assert abs(ours[1] - theirs[1]) <= 1e-5
        assert np.allclose(ours[2:], theirs[2:], atol=box_atol, rtol=0)


def assert_well_formed(detections: list[Detection], labels: list[str], width: int,
                       height: int) -> None:
    """Assert some detections of the labels, best first, scores 0..1, boxes inside the image."""
    assert detections and all(isinstance(d, Detection) for d in detections)
    assert {d.label for d in detections} <= set(labels)
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    for detection in detections:
        assert isinstance(detection.score, float) and 0.0 <= detection.score <= 1.0
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
