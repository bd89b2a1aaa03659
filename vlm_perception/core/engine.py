"""
The perception engine: one object that owns the models, their caches and the frame encodings.

Used by the ROS node and the CLI alike::

    engine = PerceptionEngine(EngineConfig(preset='default', device='auto'))
    frame = engine.frame(rgb)                      # HxWx3 uint8 RGB
    engine.detect(frame, labels=['cup'])           # -> list[Detection]
    engine.describe(frame, question='Is the door open?')

Efficiency: models load on first use (or in ``load``); label embeddings are cached per model and
text (TextEmbeddingCache); each model's image encoding of a frame is computed once and kept on the
Frame, so several requests on one frame (configured and extra labels, several tag vocabularies,
several questions, a caption) share it. Model calls run under ``torch.inference_mode`` and one
lock granted first come, first served (FairLock), so threads share the engine taking turns.
"""

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.device import resolve_device, resolve_dtype
from vlm_perception.core.errors import InputError
from vlm_perception.core.image import to_rgb
from vlm_perception.core.presets import get_preset
from vlm_perception.core.scheduling import FairLock
from vlm_perception.core.summary import summarize
from vlm_perception.core.types import Answer, Detection, LabelScore, SceneDescription

CAPABILITIES = ('detect', 'tags', 'vqa', 'caption')
ROLE_OF = {'detect': 'detector', 'tags': 'classifier', 'vqa': 'vqa', 'caption': 'captioner'}
MAX_TEXT_LENGTH = 512      # characters of a question, prompt or label
MAX_LABELS = 256
WARMUP_SIZE = (64, 96)     # height, width of the blank warm-up frame


@dataclasses.dataclass
class EngineConfig:
    """What to load and how; None means the preset's value."""

    preset: str = 'default'
    detector_model: str | None = None
    classifier_model: str | None = None
    vqa_model: str | None = None
    caption_model: str | None = None
    device: str = 'auto'
    dtype: str = 'auto'
    labels: Sequence[str] | None = None
    tag_labels: Sequence[str] | None = None
    detection_threshold: float | None = None


class Frame:
    """
    One validated RGB image plus the image encodings models made of it.

    The encodings live on the frame and go with it: dropping the frame frees them.
    """

    def __init__(self, image: np.ndarray) -> None:
        """Validate and convert the image (see image.to_rgb); keep it C-contiguous."""
        self.image = np.ascontiguousarray(to_rgb(image))
        self.height, self.width = self.image.shape[:2]
        self._encodings: dict[str, Any] = {}

    def encoding(self, model_key: str, encode: Callable[[np.ndarray], Any]) -> Any:
        """Return this frame's encoding by one model, computing it on first request."""
        if model_key not in self._encodings:
            self._encodings[model_key] = encode(self.image)
        return self._encodings[model_key]

    def crop(self, detection: Detection) -> np.ndarray:
        """Return the pixels inside a detection's box (at least one pixel)."""
        x0, y0, x1, y1 = detection.box
        left = min(max(int(math.floor(x0)), 0), self.width - 1)
        top = min(max(int(math.floor(y0)), 0), self.height - 1)
        right = max(min(int(math.ceil(x1)), self.width), left + 1)
        bottom = max(min(int(math.ceil(y1)), self.height), top + 1)
        return np.ascontiguousarray(self.image[top:bottom, left:right])


def clean_labels(labels: Iterable[str] | str | None) -> list[str]:
    """Return stripped, de-duplicated labels; a comma-separated string is split."""
    if isinstance(labels, str):
        labels = labels.split(',')
    if labels is None:
        raise InputError('label list is missing')
    cleaned = []
    for label in labels:
        if not isinstance(label, str):
            raise InputError(f'labels must be strings, got {type(label).__name__}')
        label = ' '.join(label.split())
        if len(label) > MAX_TEXT_LENGTH:
            raise InputError(f'label is longer than {MAX_TEXT_LENGTH} characters')
        if label:
            cleaned.append(label)
    cleaned = list(dict.fromkeys(cleaned))
    if not cleaned:
        raise InputError('label list is empty')
    if len(cleaned) > MAX_LABELS:
        raise InputError(f'too many labels ({len(cleaned)} > {MAX_LABELS})')
    return cleaned


def clean_text(text: str | None, what: str) -> str:
    """Return a question or prompt stripped; empty or over-long text is an InputError."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f'{what} is empty')
    text = ' '.join(text.split())
    if len(text) > MAX_TEXT_LENGTH:
        raise InputError(f'{what} is longer than {MAX_TEXT_LENGTH} characters ({len(text)})')
    return text


def check_threshold(threshold: float) -> float:
    """Return the threshold as a float in 0..1 or raise InputError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise InputError(f'detection threshold must be a number in 0..1, got {threshold!r}')
    return float(threshold)


def _finite_score(value: float) -> float:
    return min(max(float(value), 0.0), 1.0) if math.isfinite(value) else 0.0


class PerceptionEngine:
    """Detection, tags, VQA, captions and scene descriptions of RGB frames."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        """Resolve preset, models, device, dtype and vocabulary; load no model yet."""
        self.config = config or EngineConfig()
        self.preset = get_preset(self.config.preset)
        overrides = {'detect': self.config.detector_model, 'tags': self.config.classifier_model,
                     'vqa': self.config.vqa_model, 'caption': self.config.caption_model}
        self.model_ids = {capability: overrides[capability] or self.preset.model(role)
                          for capability, role in ROLE_OF.items()}
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        labels, tag_labels = self.config.labels, self.config.tag_labels
        self._labels = clean_labels(self.preset.labels if labels is None else labels)
        tag_labels = self.preset.tag_labels if tag_labels is None else tag_labels
        self._tag_labels = None if tag_labels is None else clean_labels(tag_labels)
        threshold = self.config.detection_threshold
        self.detection_threshold = check_threshold(
            self.preset.detection_threshold if threshold is None else threshold)
        self._backends: dict[str, Any] = {}
        self._text_cache = TextEmbeddingCache()
        self._lock = FairLock()  # requests and the stream take turns

    # --- vocabulary ---------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        """Return the detection vocabulary in force."""
        return list(self._labels)

    @property
    def tag_labels(self) -> list[str]:
        """Return the tag vocabulary: the detection labels unless set separately."""
        return list(self._tag_labels if self._tag_labels is not None else self._labels)

    def set_labels(self, labels: Iterable[str] | str) -> list[str]:
        """Replace the detection vocabulary; returns it cleaned (InputError if empty/invalid)."""
        cleaned = clean_labels(labels)
        with self._lock:
            self._labels = cleaned
        return list(cleaned)

    def set_tag_labels(self, labels: Iterable[str] | str | None) -> list[str]:
        """Replace the tag vocabulary (None: follow the detection labels); returns it."""
        cleaned = None if labels is None else clean_labels(labels)
        with self._lock:
            self._tag_labels = cleaned
        return self.tag_labels

    # --- models -------------------------------------------------------------------------------

    @property
    def loaded(self) -> dict[str, str]:
        """Capabilities whose model is loaded, with its model id."""
        return {capability: self.model_ids[capability] for capability in self._backends}

    def load(self, capabilities: Iterable[str] = CAPABILITIES, warmup: bool = False) -> None:
        """
        Load the models of some capabilities now; with warmup, run each once on a blank frame.

        The warm-up also encodes the configured vocabularies, so the first real frame pays for
        neither.
        """
        capabilities = self._check_capabilities(capabilities)
        for capability in capabilities:
            self.backend(capability)
        if warmup:
            frame = self.frame(np.zeros((*WARMUP_SIZE, 3), dtype=np.uint8))
            runs = {'detect': lambda: self.detect(frame),
                    'tags': lambda: self.tags(frame),
                    'vqa': lambda: self.answer(frame, 'What is this?'),
                    'caption': lambda: self.caption(frame)}
            for capability in capabilities:
                runs[capability]()

    def _check_capabilities(self, capabilities: Iterable[str]) -> list[str]:
        if isinstance(capabilities, str):
            capabilities = [capabilities]
        capabilities = list(capabilities)
        unknown = [c for c in capabilities if c not in CAPABILITIES]
        if unknown:
            raise InputError(f"unknown capability {', '.join(unknown)} "
                             f"(one of {', '.join(CAPABILITIES)})")
        return capabilities

    def backend(self, capability: str) -> Any:
        """Return the backend serving a capability, loading its model on first use."""
        self._check_capabilities([capability])
        with self._lock:
            if capability not in self._backends:
                from vlm_perception.core.backends import create_backend

                self._backends[capability] = create_backend(
                    capability, self.model_ids[capability], self.device, self.dtype)
            return self._backends[capability]

    @contextlib.contextmanager
    def _model_call(self) -> Iterator[None]:
        import torch

        with self._lock, torch.inference_mode():
            yield

    def frame(self, image: np.ndarray | Frame) -> Frame:
        """Wrap an HxWx3 uint8 RGB array (grey, RGBA, 16-bit, float converted) as a Frame."""
        return image if isinstance(image, Frame) else Frame(image)

    def _text_embeddings(self, backend: Any, labels: list[str]) -> Any:
        import torch

        return torch.stack(self._text_cache.get(backend.key, labels, backend.encode_text))

    # --- capabilities -------------------------------------------------------------------------

    def detect(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
               threshold: float | None = None) -> list[Detection]:
        """Detect the labels (default: the vocabulary) in a frame; best score first."""
        frame = self.frame(frame)
        labels = self.labels if labels is None else clean_labels(labels)
        threshold = self.detection_threshold if threshold is None else check_threshold(threshold)
        backend = self.backend('detect')
        with self._model_call():
            encoding = frame.encoding(backend.key, backend.encode_image)
            found = backend.detect(encoding, self._text_embeddings(backend, labels), threshold)
        return [Detection(labels[raw.query], _finite_score(raw.score), *raw.box)
                for raw in found]

    def tags(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
             top_k: int | None = 5) -> list[LabelScore]:
        """Score the tag vocabulary (or labels) against the whole frame; best first, top_k kept."""
        frame = self.frame(frame)
        labels = self.tag_labels if labels is None else clean_labels(labels)
        backend = self.backend('tags')
        with self._model_call():
            image_embedding = frame.encoding(backend.key, backend.encode_image)
            scores = backend.scores(image_embedding, self._text_embeddings(backend, labels))[0]
        return self._ranked(labels, scores, top_k)

    def classify_crops(self, frame: np.ndarray | Frame, detections: Sequence[Detection],
                       labels: Iterable[str] | str | None = None) -> list[LabelScore]:
        """
        Classify each detection's crop with the tag model: its best label, in input order.

        Useful to re-rank or relabel detections with CLIP.
        """
        frame = self.frame(frame)
        labels = self.tag_labels if labels is None else clean_labels(labels)
        if not detections:
            return []
        backend = self.backend('tags')
        with self._model_call():
            crops = backend.encode_images([frame.crop(detection) for detection in detections])
            scores = backend.scores(crops, self._text_embeddings(backend, labels))
        return [self._ranked(labels, row, 1)[0] for row in scores]

    @staticmethod
    def _ranked(labels: list[str], scores: np.ndarray, top_k: int | None) -> list[LabelScore]:
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise InputError(f'top_k must be a positive integer, got {top_k!r}')
        ranked = sorted((LabelScore(label, _finite_score(score))
                         for label, score in zip(labels, scores.tolist())),
                        key=lambda tag: -tag.score)
        return ranked[:top_k] if top_k is not None else ranked

    def answer(self, frame: np.ndarray | Frame, question: str) -> Answer:
        """Answer a question about the frame, with the model's confidence (0..1)."""
        frame = self.frame(frame)
        question = clean_text(question, 'question')
        backend = self.backend('vqa')
        with self._model_call():
            encoding = frame.encoding(backend.key, backend.encode_image)
            text, confidence = backend.answer(encoding, question)
        return Answer(question, text, _finite_score(confidence))

    def caption(self, frame: np.ndarray | Frame, prompt: str | None = None) -> str:
        """Caption the frame; a prompt (e.g. 'a photo of') is continued by the caption."""
        frame = self.frame(frame)
        prompt = None if prompt is None or not prompt.strip() else clean_text(prompt, 'prompt')
        backend = self.backend('caption')
        with self._model_call():
            encoding = frame.encoding(backend.key, backend.encode_image)
            return backend.caption(encoding, prompt)

    def describe(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
                 question: str | None = None, caption: bool = True, tags: bool = True,
                 detect: bool = True) -> SceneDescription:
        """
        Caption, tags, detections and (with a question) an answer, plus a summary paragraph.

        ``labels`` replace the detection vocabulary for this call (and the tag vocabulary when
        that follows the labels).
        """
        frame = self.frame(frame)
        labels = None if labels is None else clean_labels(labels)
        if question is not None and question.strip():
            question = clean_text(question, 'question')
        else:
            question = None
        tag_labels = labels if labels is not None and self._tag_labels is None else None
        scene = SceneDescription()
        if caption:
            scene.caption = self.caption(frame)
        if tags:
            scene.tags = self.tags(frame, tag_labels)
        if detect:
            scene.detections = self.detect(frame, labels)
        if question is not None:
            scene.answer = self.answer(frame, question)
        scene.summary = summarize(scene.caption, scene.tags, scene.detections if detect else None,
                                  frame.width, scene.answer)
        return scene
