"""
The perception engine: one object that owns the models, their caches and the frame encodings.

Used by the ROS node and the CLI alike::

    engine = PerceptionEngine(EngineConfig(preset='default', device='auto'))
    frame = engine.frame(rgb)                      # HxWx3 uint8 RGB
    engine.detect(frame, labels=['cup'])           # -> list[Detection]
    engine.detect_many([frame, other])             # -> one list per frame, images encoded at once
    engine.segment(frame, detections)              # -> the detections with masks (SAM)
    engine.describe(frame, question='Is the door open?')

Efficiency: models load on first use (or in ``load``); label embeddings are cached per model and
text (TextEmbeddingCache); each model's image encoding of a frame is computed once and kept on the
Frame, so several requests on one frame (configured and extra labels, several tag vocabularies,
several questions, a caption) share it. The frame goes to the models' device once
(``Frame.tensor``), where the transformers image processors resize and normalise it; attention
is torch's SDPA where a model has it; ``EngineConfig.compile`` adds torch.compile (compiling.py).
Model calls run under ``torch.inference_mode`` and one lock granted first come, first served
(FairLock), so threads share the engine taking turns.

Out of memory: torch's (CUDA) out-of-memory error in a model call or load becomes an
``OutOfMemory`` error after the engine trimmed its caches (the frame's encodings, the text
embeddings, torch's CUDA cache); the lock is released and the engine keeps serving. Environment
variable ``VLM_PERCEPTION_INJECT_OOM`` injects such errors for tests (see faults.py).

Models can be replaced while the engine serves (``replace_model``): the new one loads beside the
old, which serves until the swap, and stays if the new one fails to load.
"""

import dataclasses
import math
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vlm_perception.core.backends.contracts import (Answerer, BatchAnswerer, BatchImageEncoder,
                                                    Captioner, Detector, Segmenter, Tagger)
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.device import resolve_device, resolve_dtype
from vlm_perception.core.errors import InputError, OutOfMemory
from vlm_perception.core.faults import FaultInjector
from vlm_perception.core.frame import Frame, RGBImage
from vlm_perception.core.options import ModelOptions, Value, with_preset_options
from vlm_perception.core.presets import get_preset
from vlm_perception.core.scheduling import FairLock
from vlm_perception.core.slots import OLD_PARAMETERS, SLOT_OF, SLOTS, warn_deprecated
from vlm_perception.core.summary import summarize
from vlm_perception.core.types import Answer, Detection, LabelScore, SceneDescription

CAPABILITIES = tuple(slot.capability for slot in SLOTS)  # detect, tags, vqa, caption, segment
# What load() and the node run unless told otherwise: all but the optional ones (segment).
DEFAULT_CAPABILITIES = tuple(slot.capability for slot in SLOTS if slot.on_by_default)
MAX_TEXT_LENGTH = 512      # characters of a question, prompt or label
MAX_LABELS = 256
WARMUP_SIZE = (64, 96)     # height, width of the blank warm-up frame


def _rename_old_keywords(self: 'EngineConfig', *old_values: str | None) -> None:
    """Move the values of deprecated keywords (classifier_model, ...) to their slot's field."""
    for (old, slot), value in zip(OLD_PARAMETERS.items(), old_values):
        if value is not None:
            warn_deprecated(old, slot.parameter, 'EngineConfig keyword', stacklevel=4)
            if getattr(self, slot.parameter) is None:
                setattr(self, slot.parameter, value)


# What to load and how; None means the preset's. One <slot>_model field per model slot
# (detector_model, tagger_model, vqa_model, captioner_model, segmenter_model); the former names
# are keywords only (deprecated: they set their slot's field and warn). compile: torch.compile
# each model's heavy modules as it loads (compiling.py), eager where that fails.
EngineConfig = dataclasses.make_dataclass(
    'EngineConfig',
    [('preset', str, 'default'), *[(slot.parameter, str | None, None) for slot in SLOTS],
     ('device', str, 'auto'), ('dtype', str, 'auto'), ('labels', Sequence[str] | None, None),
     ('tag_labels', Sequence[str] | None, None), ('detection_threshold', float | None, None),
     ('options', ModelOptions, dataclasses.field(default_factory=ModelOptions)),
     ('compile', bool, False),
     *[(old, dataclasses.InitVar[str | None], None) for old in OLD_PARAMETERS]],
    namespace={'__doc__': "What to load and how; None means the preset's.",
               '__module__': __name__, '__post_init__': _rename_old_keywords})


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _vector(encoding: Any) -> np.ndarray:
    """Return a (D,) float32 array of an embedding (a torch tensor or an array)."""
    if hasattr(encoding, 'detach'):
        encoding = encoding.detach().float().cpu().numpy()
    return np.ascontiguousarray(encoding, dtype=np.float32).reshape(-1)


class PerceptionEngine:
    """Detection, masks, tags, VQA, captions and scene descriptions of RGB frames."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        """Resolve preset, models, device, dtype and vocabulary; load no model yet."""
        self.config = config or EngineConfig()
        self.preset = get_preset(self.config.preset)
        self.model_ids = {slot.capability: getattr(self.config, slot.parameter)
                          or self.preset.model(slot.key) for slot in SLOTS}
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        labels, tag_labels = self.config.labels, self.config.tag_labels
        self._labels = clean_labels(self.preset.labels if labels is None else labels)
        tag_labels = self.preset.tag_labels if tag_labels is None else tag_labels
        self._tag_labels = None if tag_labels is None else clean_labels(tag_labels)
        threshold = self.config.detection_threshold
        self.detection_threshold = check_threshold(
            self.preset.detection_threshold if threshold is None else threshold)
        # InputError naming a bad one; the preset's options where the config keeps the defaults
        self.options = with_preset_options(self.config.options.checked(), self.preset.options)
        self._backends: dict[str, Any] = {}
        self._text_cache = TextEmbeddingCache()
        self._lock = FairLock()  # requests and the stream take turns
        self._replace_lock = threading.Lock()  # one replace_model at a time
        self._faults = FaultInjector.from_environment()  # VLM_PERCEPTION_INJECT_OOM (tests)
        self._count_lock = threading.Lock()
        self.out_of_memory_count = 0  # OutOfMemory errors raised so far (calls and loads)

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

    def set_options(self, **changes: Value) -> ModelOptions:
        """
        Change model options (options.py) of the loaded models and of those loaded later.

        Returns the options in force; InputError for an unknown name or a bad value. Options
        applied at load (``tag_resize_mode``) hold from the next load of the model.
        """
        with self._lock:
            self.options = self.options.changed(**changes)
            for backend in self._backends.values():
                backend.options = self.options
            return self.options

    # --- models -------------------------------------------------------------------------------

    @property
    def loaded(self) -> dict[str, str]:
        """Capabilities whose model is loaded, with its model id."""
        return {capability: self.model_ids[capability] for capability in self._backends}

    def unload(self) -> None:
        """Drop every loaded model and the text embeddings; models load again on first use."""
        with self._lock:
            self._backends.clear()
            self._trim_caches()

    def _trim_caches(self) -> None:
        """Forget the text embeddings and give torch's cached CUDA memory back."""
        import torch

        self._text_cache.clear()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def load(self, capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
             warmup: bool = False) -> None:
        """
        Load the models of some capabilities now; with warmup, run each once on a blank frame.

        By default those of DEFAULT_CAPABILITIES: segment loads only when asked for.

        The warm-up also encodes the configured vocabularies, so the first real frame pays for
        neither.
        """
        capabilities = self._check_capabilities(capabilities)
        for capability in capabilities:
            self.backend(capability)
        if warmup:
            frame = self._blank_frame()
            for capability in capabilities:
                self._warm_up(capability, frame)

    def _check_capabilities(self, capabilities: Iterable[str]) -> list[str]:
        if isinstance(capabilities, str):
            capabilities = [capabilities]
        capabilities = list(capabilities)
        unknown = [c for c in capabilities if c not in CAPABILITIES]
        if unknown:
            raise InputError(f"unknown capability {', '.join(map(str, unknown))} "
                             f"(one of {', '.join(CAPABILITIES)})")
        return capabilities

    def backend(self, capability: str) -> Any:
        """Return the backend serving a capability, loading its model on first use."""
        self._check_capabilities([capability])
        with self._lock:
            if capability not in self._backends:
                self._backends[capability] = self._create_backend(
                    capability, self.model_ids[capability])
            return self._backends[capability]

    def _create_backend(self, capability: str, model_id: str) -> Any:
        """
        Load a backend; torch's out of memory becomes OutOfMemory (caches trimmed).

        A model is loaded once per (model id, device, dtype): when another capability's backend
        holds the model and its class serves this capability too (a generative VLM answering
        and captioning), that object is returned instead, and with it its frame encodings.
        With ``config.compile`` a new backend's modules get torch.compile (compiling.py): the
        first run compiles them, so a warm-up should follow.
        """
        import torch

        from vlm_perception.core.backends import create_backend, serves
        from vlm_perception.core.compiling import compile_backend

        for loaded in list(self._backends.values()):  # a snapshot: replace_model is unlocked
            if serves(loaded, capability, model_id):
                return loaded
        try:
            self._faults.load()
            backend = create_backend(capability, model_id, self.device, self.dtype, self.options)
            if self.config.compile:
                compile_backend(backend)
            return backend
        except torch.OutOfMemoryError as error:
            reason = _first_line(error)
        # Past the except block the failed load's frames, and the tensors they held, are gone.
        raise self._out_of_memory(f"loading the {capability} model '{model_id}'", reason)

    def replace_model(self, capability: str, model_id: str, warmup: bool = False) -> None:
        """
        Serve a capability with another model, loaded beside the one in use, then swapped in.

        The old model keeps serving while the new one loads: the engine lock is not held during
        the load, only for the swap (and, with ``warmup``, for one run of the new model on a blank
        frame of its own, which also encodes the vocabulary, before the swap). After the swap
        ``model_ids`` names the new model and the old one's text embeddings are dropped; the old
        model is freed once no call uses it. If the load or the warm-up fails (ModelLoadError,
        OutOfMemory, ...) the old model and model id stay and the error propagates. For a
        capability whose model is not loaded yet only the id is recorded (loaded on first use).
        Device and dtype stay the engine's. InputError for an unknown capability or empty id.
        """
        capability, = self._check_capabilities([capability])
        if not isinstance(model_id, str) or not model_id.strip():
            raise InputError(f'model id for {capability} must be a non-empty string, got '
                             f'{model_id!r}')
        with self._replace_lock:
            with self._lock:
                if capability not in self._backends:
                    self.model_ids[capability] = model_id
                    return
            backend = self._create_backend(capability, model_id)  # the old one serves meanwhile
            if warmup:
                self._warm_up(capability, self._blank_frame(), backend)
            with self._lock:
                old = self._backends[capability]
                self._backends[capability] = backend
                self.model_ids[capability] = model_id
                if all(other is not old for other in self._backends.values()):
                    self._text_cache.clear(old.key)  # unless it still serves another capability

    def model_for(self, capability: str, preset: str | None = None,
                  override: str | None = None) -> str:
        """
        Return the model id a capability gets: ``override`` if set, else the preset's.

        ``preset`` (a name or folder, as in EngineConfig) defaults to the engine's own; useful to
        follow a preset change with ``replace_model``. InputError for an unknown capability or
        preset.
        """
        capability, = self._check_capabilities([capability])
        if override:
            return override
        source = self.preset if preset is None else get_preset(preset)
        return source.model(SLOT_OF[capability].key)

    def _run(self, capability: str, frame: Frame | Sequence[Frame], work: Callable[[Any], Any],
             backend: Any = None, what: str | None = None) -> Any:
        """
        Run ``work(backend)`` as one model call: in turn (the lock), under inference_mode.

        ``frame`` is the frame worked on, or the frames (detect_many): their encodings are
        dropped on out of memory.

        Without ``backend`` the capability's current one is used (loaded first if need be), read
        under the lock, so a call never straddles a swap. Torch's out of memory becomes
        OutOfMemory after trimming (``what`` names the call in its message).
        """
        import torch

        if backend is None:
            self.backend(capability)  # a first use loads outside inference_mode
        with self._lock:
            result = None
            try:
                with torch.inference_mode():
                    result = work(self._backends[capability] if backend is None else backend)
                    self._faults.call()  # an injected fault comes after the model ran
                return result
            except torch.OutOfMemoryError as error:
                reason = _first_line(error)
            # Past the except block the failed call's frames, and the tensors they held, are gone
            # (not kept by a traceback), so that emptying torch's cache can give them back.
            del result
            failure = self._out_of_memory(f'in {what or capability}', reason, frame)
        raise failure

    def _out_of_memory(self, what: str, reason: str,
                       frame: Frame | Sequence[Frame] | None = None) -> OutOfMemory:
        """Trim what memory can be trimmed, count, and return the OutOfMemory to raise."""
        for each in [frame] if isinstance(frame, Frame) else frame or ():
            each.drop_encodings()
        self._trim_caches()
        with self._count_lock:
            self.out_of_memory_count += 1
        return OutOfMemory(f'out of memory {what} on {self.device}: {reason}')

    def _blank_frame(self) -> Frame:
        return self.frame(np.zeros((*WARMUP_SIZE, 3), dtype=np.uint8))

    def _warm_up(self, capability: str, frame: Frame, backend: Any = None) -> None:
        """Run a capability once on frame (with backend: that one, not the one serving)."""
        what = None if backend is None else \
            f"the warm-up of the {capability} model '{backend.model_id}'"
        if capability == 'detect':
            self._detect(frame, self.labels, self.detection_threshold, backend, what)
        elif capability == 'tags':
            self._tags(frame, self.tag_labels, 5, backend, what)
        elif capability == 'vqa':
            self._answer(frame, 'What is this?', backend, what)
        elif capability == 'segment':  # one box, the whole frame
            whole = Detection('warm-up', 1.0, frame.width / 2, frame.height / 2, frame.width,
                              frame.height)
            self._segment(frame, [whole], backend, what)
        else:
            self._caption(frame, None, backend, what)

    def frame(self, image: RGBImage | Frame) -> Frame:
        """Wrap an HxWx3 RGB array (grey, RGBA, 16-bit, float converted) or tensor as a Frame."""
        return image if isinstance(image, Frame) else Frame(image)

    # --- capabilities -------------------------------------------------------------------------

    def detect(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
               threshold: float | None = None) -> list[Detection]:
        """Detect the labels (default: the vocabulary) in a frame; best score first."""
        frame = self.frame(frame)
        labels = self.labels if labels is None else clean_labels(labels)
        threshold = self.detection_threshold if threshold is None else check_threshold(threshold)
        return self._detect(frame, labels, threshold)

    def _detect(self, frame: Frame, labels: list[str], threshold: float, backend: Any = None,
                what: str | None = None) -> list[Detection]:
        def work(backend: Detector) -> list[Detection]:
            return backend.detect(frame, labels, threshold, self._text_cache)

        found = self._run('detect', frame, work, backend, what)
        return [dataclasses.replace(detection, score=_finite_score(detection.score))
                for detection in found]

    def detect_many(self, frames: Sequence[np.ndarray | Frame],
                    labels: Iterable[str] | str | None = None,
                    threshold: float | None = None) -> list[list[Detection]]:
        """
        Detect the labels in several frames (cameras) at once: per frame what detect gives.

        With a detector that encodes images in batches (OWL-ViT, OWLv2: BatchImageEncoder) the
        frames not encoded yet are encoded in one call, each encoding kept on its Frame, and
        each frame is then scored from its own; other detectors run once per frame. One turn
        of the engine lock serves all the frames.
        """
        frames = [self.frame(frame) for frame in frames]
        labels = self.labels if labels is None else clean_labels(labels)
        threshold = self.detection_threshold if threshold is None else check_threshold(threshold)
        if not frames:
            return []

        def work(backend: Detector) -> list[list[Detection]]:
            if isinstance(backend, BatchImageEncoder):
                self._encode_together(backend, frames)
            return [backend.detect(frame, labels, threshold, self._text_cache)
                    for frame in frames]

        found = self._run('detect', frames, work, what='detect_many')
        return [[dataclasses.replace(detection, score=_finite_score(detection.score))
                 for detection in detections] for detections in found]

    @staticmethod
    def _encode_together(backend: BatchImageEncoder, frames: list[Frame]) -> None:
        """Encode the frames that backend has not encoded yet in one call; keep each's own."""
        missing = list({id(frame): frame for frame in frames
                        if not frame.has_encoding(backend.key)}.values())
        if len(missing) < 2:
            return  # detect encodes a single frame itself, as ever
        device = getattr(backend, 'tensor_device', None)  # as detect would hand each frame
        encodings = backend.encode_images([frame.image if device is None else frame.tensor(device)
                                           for frame in missing])
        for frame, encoding in zip(missing, encodings, strict=True):
            frame.encoding(backend.key, lambda image, encoding=encoding: encoding)

    def segment(self, frame: np.ndarray | Frame,
                detections: Sequence[Detection]) -> list[Detection]:
        """
        Return the detections, in order, each with its mask (Detection.mask) by the segmenter.

        The boxes prompt the model (SAM, SAM2), all at once; the frame's image embedding is
        computed once and kept, whatever the calls on the frame. A box with no pixel in the
        frame gets no mask (None). InputError for anything but detections with finite boxes.
        """
        frame = self.frame(frame)
        detections = list(detections)
        for detection in detections:
            if not isinstance(detection, Detection):
                raise InputError(f'segment takes detections, got {type(detection).__name__}')
            if not all(math.isfinite(value) for value in detection.box):
                raise InputError(f"detection '{detection.label}' has a non-finite box")
        if not detections:
            return []
        return self._segment(frame, detections)

    def _segment(self, frame: Frame, detections: list[Detection], backend: Any = None,
                 what: str | None = None) -> list[Detection]:
        def work(backend: Segmenter) -> list[np.ndarray]:
            return backend.segment(frame, detections)

        masks = self._run('segment', frame, work, backend, what)
        return [dataclasses.replace(detection, mask=np.ascontiguousarray(mask, dtype=np.uint8)
                                    if mask.size else None)
                for detection, mask in zip(detections, masks, strict=True)]

    def tags(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
             top_k: int | None = 5) -> list[LabelScore]:
        """Score the tag vocabulary (or labels) against the whole frame; best first, top_k kept."""
        frame = self.frame(frame)
        labels = self.tag_labels if labels is None else clean_labels(labels)
        return self._tags(frame, labels, top_k)

    def _tags(self, frame: Frame, labels: list[str], top_k: int | None, backend: Any = None,
              what: str | None = None) -> list[LabelScore]:
        def work(backend: Tagger) -> np.ndarray:
            return backend.scores(frame, labels, self._text_cache)

        return self._ranked(labels, self._run('tags', frame, work, backend, what), top_k)

    def scene_embedding(self, frame: Frame) -> np.ndarray | None:
        """
        Return the tag model's normalised embedding of the whole frame, as ``tags`` kept it.

        Never encodes (no extra model pass): None when no tagger is loaded, when it keeps no
        frame embedding (not an embedding tagger), or when tags did not run on this frame.
        """
        backend = self._backends.get('tags')
        key = getattr(backend, 'key', None)
        if key is None or not hasattr(backend, 'encode_image') or not frame.has_encoding(key):
            return None
        # the same key returns the kept encoding, so encode_image is not called
        return _vector(frame.encoding(key, backend.encode_image))

    def text_embedding(self, text: str) -> np.ndarray | None:
        """
        Return the tag model's normalised embedding of a text, as it embeds a tag label.

        Through the ``tag_templates`` option and the text cache, so a repeated text is encoded
        once. None when no embedding tagger is loaded (no model is loaded for it).
        """
        text = clean_text(text, 'query')
        backend = self._backends.get('tags')
        if not hasattr(backend, 'encode_text') or getattr(backend, 'key', None) is None:
            return None

        def work(backend: Any) -> Any:
            # here, not at import: prompts imports torch, which the engine loads only for models
            from vlm_perception.core.prompts import cached_label_embeddings

            return cached_label_embeddings(self._text_cache, backend.key, [text],
                                           backend.options.tag_templates,
                                           backend.encode_text)[0]

        return _vector(self._run('tags', [], work, backend, what='text embedding'))

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

        def work(backend: Tagger) -> np.ndarray:
            return backend.crop_scores([frame.crop(detection) for detection in detections],
                                       labels, self._text_cache)

        scores = self._run('tags', frame, work, what='classify_crops')
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
        return self._answer(frame, question)

    def _answer(self, frame: Frame, question: str, backend: Any = None,
                what: str | None = None) -> Answer:
        def work(backend: Answerer) -> tuple[str, float]:
            return backend.answer(frame, question)

        text, confidence = self._run('vqa', frame, work, backend, what)
        return Answer(question, text, _finite_score(confidence))

    def answer_many(self, frame: np.ndarray | Frame, questions: Sequence[str]) -> list[Answer]:
        """
        Answer several questions about one frame, each as ``answer`` would, in one engine turn.

        An answerer that batches questions (BLIP, ViLT: BatchAnswerer) answers them in one
        model call, which costs little more than one question; others answer in turn. Any bad
        question (empty, too long) is an InputError for the whole call.
        """
        frame = self.frame(frame)
        questions = [clean_text(question, 'question') for question in questions]
        if not questions:
            return []

        def work(backend: Answerer) -> list[tuple[str, float]]:
            if isinstance(backend, BatchAnswerer):
                return backend.answer_many(frame, questions)
            return [backend.answer(frame, question) for question in questions]

        found = self._run('vqa', frame, work, what='answer_many')
        return [Answer(question, text, _finite_score(confidence))
                for question, (text, confidence) in zip(questions, found, strict=True)]

    def caption(self, frame: np.ndarray | Frame, prompt: str | None = None) -> str:
        """Caption the frame; a prompt (e.g. 'a photo of') is continued by the caption."""
        frame = self.frame(frame)
        prompt = None if prompt is None or not prompt.strip() else clean_text(prompt, 'prompt')
        return self._caption(frame, prompt)

    def _caption(self, frame: Frame, prompt: str | None, backend: Any = None,
                 what: str | None = None) -> str:
        def work(backend: Captioner) -> str:
            return backend.caption(frame, prompt)

        return self._run('caption', frame, work, backend, what)

    def describe(self, frame: np.ndarray | Frame, labels: Iterable[str] | str | None = None,
                 question: str | None = None, caption: bool = True, tags: bool = True,
                 detect: bool = True, segment: bool = False,
                 detections: Sequence[Detection] | None = None) -> SceneDescription:
        """
        Caption, tags, detections and (with a question) an answer, plus a summary paragraph.

        ``labels`` replace the detection vocabulary for this call (and the tag vocabulary when
        that follows the labels). With ``segment`` the detections get their masks.
        ``detections`` are the frame's, already found (and masked or placed): with ``detect``
        they are the scene's instead of a new detection.
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
        if detect and detections is not None:
            scene.detections = list(detections)
        elif detect:
            scene.detections = self.detect(frame, labels)
            if segment:
                scene.detections = self.segment(frame, scene.detections)
        if question is not None:
            scene.answer = self.answer(frame, question)
        scene.summary = summarize(scene.caption, scene.tags, scene.detections if detect else None,
                                  frame.width, scene.answer)
        return scene
