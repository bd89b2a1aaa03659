"""What the scene memory keeps and returns: entries, matches, label normalising, thumbnails."""

from dataclasses import dataclass, field
import json

import numpy as np

from vlm_perception.core.errors import InputError
from vlm_perception.core.types import Detection


def normalise_label(text: str) -> str:
    """Return ``text`` in lower case with runs of whitespace collapsed to one space."""
    return ' '.join(text.lower().split())


def checked_embedding(embedding: np.ndarray, what: str) -> np.ndarray:
    """Return ``embedding`` as a contiguous 1-D float32 array; refuse empty or non-finite."""
    array = np.ascontiguousarray(embedding, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise InputError(f'{what} must be 1-D and not empty, got shape {array.shape}')
    if not np.isfinite(array).all():
        raise InputError(f'{what} has non-finite values')
    return array


@dataclass
class MemoryEntry:
    """
    One remembered scene.

    ``embedding`` is the tag model's encoding of the whole frame (1-D float32), None where the
    node had no tag model; ``tagger_model_id`` names the model it came from (embeddings of
    different models are never compared). ``thumbnail_jpeg`` is a small JPEG, b'' for none.
    """

    stamp_ns: int
    frame_id: str
    source: str
    caption: str = ''
    tags: list[tuple[str, float]] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    embedding: np.ndarray | None = None
    tagger_model_id: str = ''
    thumbnail_jpeg: bytes = b''

    def __post_init__(self) -> None:
        """Check the stamp and bring the embedding to a contiguous 1-D float32 array."""
        if int(self.stamp_ns) < 0:
            raise InputError(f'a memory entry needs a stamp >= 0, got {self.stamp_ns}')
        self.stamp_ns = int(self.stamp_ns)
        if self.embedding is not None:
            self.embedding = checked_embedding(self.embedding, 'a memory entry embedding')

    @property
    def labels(self) -> frozenset[str]:
        """Normalised labels of the detections."""
        return frozenset(normalise_label(detection.label) for detection in self.detections)


@dataclass
class MemoryMatch:
    """
    A remembered scene answering a recall, best first.

    ``score`` is 1.0 for an exact label match, else (cos + 1) / 2 of the query text's and the
    scene's embeddings; ``detections`` are those whose label matched the query (with their
    positions where depth placed them), empty for a match by embedding only.
    """

    stamp_ns: int
    frame_id: str
    source: str
    score: float
    caption: str
    detections: list[Detection] = field(default_factory=list)
    thumbnail_jpeg: bytes = b''


def detections_to_json(detections: list[Detection]) -> str:
    """Serialise label, score, box, position and size (masks are not kept)."""
    return json.dumps([
        {'label': item.label, 'score': float(item.score),
         'box': [float(item.center_x), float(item.center_y), float(item.size_x),
                 float(item.size_y)],
         'position': None if item.position is None else [float(v) for v in item.position],
         'size': None if item.size is None else [float(v) for v in item.size]}
        for item in detections], separators=(',', ':'))


def detections_from_json(text: str) -> list[Detection]:
    """Read detections written by ``detections_to_json``."""
    result = []
    for item in json.loads(text):
        center_x, center_y, size_x, size_y = item['box']
        result.append(Detection(
            item['label'], item['score'], center_x, center_y, size_x, size_y,
            position=None if item['position'] is None else tuple(item['position']),
            size=None if item['size'] is None else tuple(item['size'])))
    return result


def tags_to_json(tags: list[tuple[str, float]]) -> str:
    """Serialise (label, score) pairs."""
    return json.dumps([[str(label), float(score)] for label, score in tags],
                      separators=(',', ':'))


def thumbnail(rgb: np.ndarray, max_side: int = 160, quality: int = 80) -> bytes:
    """Return a JPEG of an HxWx3 uint8 RGB image, shrunk (aspect kept) to at most max_side."""
    import cv2  # here, not at import: the entry types must not need OpenCV

    if max_side < 1:
        raise InputError(f'thumbnail max_side must be >= 1, got {max_side}')
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise InputError('thumbnail needs an HxWx3 uint8 RGB image, got '
                         f'{rgb.dtype} {rgb.shape}')
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        # INTER_AREA: no aliasing when shrinking a camera frame by 4-10x.
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError('OpenCV could not encode the thumbnail as JPEG')
    return data.tobytes()
