# noqa: A005 (the team contract names this module types.py)
"""Results of the perception core; they mirror the package's ROS messages field by field."""

from dataclasses import dataclass, field, fields
import math

import numpy as np

Vector = tuple[float, float, float]


@dataclass
class Detection:
    """One open-vocabulary detection, box centre and size in pixels of the source image."""

    label: str
    score: float
    center_x: float
    center_y: float
    size_x: float
    size_y: float
    # Centre and metric size (x, y, z) in the camera's optical frame (metres), where depth
    # placed the object; None otherwise.
    position: Vector | None = None
    size: Vector | None = None
    # The object's pixels in the box where a segmenter ran: (H, W) uint8, 255 = object, over
    # the rows and columns pixel_window gives; None otherwise.
    mask: np.ndarray | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Corners (x0, y0, x1, y1) in pixels."""
        return (self.center_x - self.size_x / 2, self.center_y - self.size_y / 2,
                self.center_x + self.size_x / 2, self.center_y + self.size_y / 2)

    def pixel_window(self, width: int, height: int) -> tuple[int, int, int, int]:
        """
        Return the pixels (left, top, right, bottom) a mask covers in a width x height image.

        Columns floor(x0) to ceil(x1) (excluded), rows floor(y0) to ceil(y1), clipped to the
        image; the window is empty (right == left or bottom == top) for a box outside it.
        """
        x0, y0, x1, y1 = self.box
        left = min(max(math.floor(x0), 0), width)
        top = min(max(math.floor(y0), 0), height)
        right = min(max(math.ceil(x1), left), width)
        bottom = min(max(math.ceil(y1), top), height)
        return left, top, right, bottom

    def __eq__(self, other: object) -> bool:
        """Compare field by field, masks by shape and pixels (an array has no truth value)."""
        if not isinstance(other, Detection):
            return NotImplemented
        if (self.mask is None) != (other.mask is None) or (
                self.mask is not None and not np.array_equal(self.mask, other.mask)):
            return False
        return all(getattr(self, item.name) == getattr(other, item.name)
                   for item in fields(self) if item.name != 'mask')

    def to_dict(self) -> dict:
        """
        Fields of the Detection message; position and size ({x, y, z}) only where known.

        A mask, where there is one, is summed up rather than listed: mask {width, height, area},
        the area in object pixels.
        """
        result = {'label': self.label, 'score': self.score, 'center_x': self.center_x,
                  'center_y': self.center_y, 'size_x': self.size_x, 'size_y': self.size_y,
                  'has_position': self.position is not None}
        if self.position is not None:
            result['position'] = dict(zip('xyz', self.position))
            result['size'] = dict(zip('xyz', self.size or (0.0, 0.0, 0.0)))
        if self.mask is not None:
            height, width = self.mask.shape[:2]
            result['mask'] = {'width': width, 'height': height,
                              'area': int(np.count_nonzero(self.mask))}
        return result


@dataclass
class LabelScore:
    """A zero-shot label and its score, 0..1."""

    label: str
    score: float

    def to_dict(self) -> dict:
        """Fields of the LabelScore message."""
        return {'label': self.label, 'score': self.score}


@dataclass
class Answer:
    """An answer to a visual question, with the model's confidence, 0..1."""

    question: str
    answer: str
    confidence: float

    def to_dict(self) -> dict:
        """Fields printed by ``vlm-perception ask --json``."""
        return {'answer': self.answer, 'confidence': self.confidence}


@dataclass
class SceneDescription:
    """What the engine sees in one image: caption, tags, detections and a readable summary."""

    caption: str = ''
    tags: list[LabelScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    summary: str = ''
    answer: Answer | None = None

    def to_dict(self) -> dict:
        """Fields of the SceneDescription message (plus the answer when a question was asked)."""
        result = {'caption': self.caption,
                  'tags': [tag.to_dict() for tag in self.tags],
                  'detections': [detection.to_dict() for detection in self.detections],
                  'summary': self.summary}
        if self.answer is not None:
            result['answer'] = self.answer.to_dict()
        return result
