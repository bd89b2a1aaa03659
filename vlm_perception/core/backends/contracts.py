"""
What the engine asks of a backend, one contract per capability.

A backend owns its model's inputs and outputs: it encodes the Frame once per model (through
``Frame.encoding`` under its ``key``), keeps what it can reuse across frames in the text cache,
and returns the core's result types. The engine keeps validation, locking, fault handling and
the Frame. A model that serves several capabilities (a generative VLM answering and captioning)
is one backend object implementing several contracts.
"""

from typing import Any, Protocol, runtime_checkable, Sequence

import numpy as np

from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.frame import Frame
from vlm_perception.core.types import Detection


@runtime_checkable
class Model(Protocol):
    """Identity of a loaded model: its id and the key of its caches (id, device, dtype)."""

    model_id: str
    key: str


@runtime_checkable
class Detector(Model, Protocol):
    """Open-vocabulary detection: boxes of labels in a frame."""

    def detect(self, frame: Frame, labels: list[str], threshold: float,
               text_cache: TextEmbeddingCache) -> list[Detection]:
        """Return the detections scoring threshold or more, best first; labels as given."""


@runtime_checkable
class BatchImageEncoder(Model, Protocol):
    """
    Optional beside a contract: the frame encodings of several images in one model call.

    The engine stores each on its Frame (under ``key``), where the capability's own call finds
    it, so several cameras' frames cost one image-encoder call (Detector: ``detect_many``).
    """

    def encode_images(self, images: list[np.ndarray]) -> list[Any]:
        """Return one encoding per HxWx3 uint8 RGB image, each as its Frame would store it."""


@runtime_checkable
class Tagger(Model, Protocol):
    """Zero-shot classification of a whole frame or of crops."""

    def scores(self, frame: Frame, labels: list[str],
               text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (Q,) score of each label for the whole frame, 0..1."""

    def crop_scores(self, crops: list[np.ndarray], labels: list[str],
                    text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (N, Q) scores of each label for N RGB crops."""


@runtime_checkable
class Answerer(Model, Protocol):
    """Visual question answering."""

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Return the answer and its confidence, 0..1."""


@runtime_checkable
class BatchAnswerer(Model, Protocol):
    """
    Optional beside Answerer: several questions on one frame in one model call.

    Each answer equals what ``answer`` gives for its question alone (BLIP, ViLT).
    """

    def answer_many(self, frame: Frame, questions: list[str]) -> list[tuple[str, float]]:
        """Return the answer and its confidence, 0..1, for each question, in order."""


@runtime_checkable
class Captioner(Model, Protocol):
    """Image captioning, optionally continuing a prompt."""

    def caption(self, frame: Frame, prompt: str | None) -> str:
        """Return a caption of the frame, continuing the prompt when one is given."""


@runtime_checkable
class Segmenter(Model, Protocol):
    """Box-prompted segmentation: the object's pixels inside each detection's box."""

    def segment(self, frame: Frame, detections: Sequence[Detection]) -> list[np.ndarray]:
        """
        Return one mono8 mask (255 = object, 0 = not) per detection, in order.

        Each covers its box's pixels as ``Detection.pixel_window`` gives them (the shape of
        ``Detection.mask``).
        """


CONTRACTS = {'detect': Detector, 'tags': Tagger, 'vqa': Answerer, 'caption': Captioner,
             'segment': Segmenter}
