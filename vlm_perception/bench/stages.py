"""
The engine's time per capability and per stage, on the same frames, with real-size models.

Stages are timed by wrapping a loaded backend's own steps on the instance (the model code is
unchanged; STEPS names them): ``preprocessing`` (the transformers image processor however the
backend calls it, or open_clip's transform), ``image encoder`` (the rest of ``encode_image`` /
``encode_images``, or the image backbone inside a model that runs image and text in one pass,
Grounding DINO's), ``text encoder`` (``encode_text``: 0 once a vocabulary is cached; or such a
model's text backbone, run every request), ``heads + post-processing`` (the rest of the request:
fusion and heads, the generation of a VLM, mask decoding), plus ``image conversion`` (a
sensor_msgs/Image to RGB, as the node converts, or the Frame's checks without ROS) and
``publishing`` (the result to its message and serialised, where ROS is importable). Times are
exclusive: a stage nested in another is not counted twice.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

STAGES = ('image conversion', 'preprocessing', 'image encoder', 'text encoder',
          'heads + post-processing', 'publishing')
REQUEST = 'heads + post-processing'  # what is left of a request once the wrapped steps are out
# (dotted path from the backend, stage): the steps timed where the backend has them. A module's
# step is its forward; an object's (the image processor) its calls, its attributes left as they
# are. A step nested in another of the same stage adds nothing.
STEPS = (
    ('processor.image_processor', 'preprocessing'),  # transformers, called by the processor too
    ('pixels', 'preprocessing'),                     # HFBackend: to the device, then the above
    ('preprocess', 'preprocessing'),                 # open_clip's transform
    ('encode_image', 'image encoder'),
    ('encode_images', 'image encoder'),
    ('model.model.backbone.forward', 'image encoder'),      # Grounding DINO's Swin
    ('encode_text', 'text encoder'),
    ('model.model.text_backbone.forward', 'text encoder'),  # Grounding DINO's BERT
)
TARGET_BOXES = 10       # the detector threshold lets about this many boxes through per frame
QUESTIONS = ('what colour is the cup', 'how many chairs are there', 'is the door open',
             'where is the dog')
BENCH_ANSWER_TOKENS = 3    # random weights never end an answer; real VQA answers are 1-3 tokens
BENCH_CAPTION_TOKENS = 20  # and captions about 10-20


@dataclass
class StageTimer:
    """Exclusive wall time per stage, one sample per request (``request`` ... ``done``)."""

    samples: list[dict[str, float]] = field(default_factory=list)
    _stack: list[list[float]] = field(default_factory=list)  # [start, time of nested stages]
    _wrapped: list[tuple[Any, str, Any, bool]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; time spent in stages nested in it is counted to them only."""
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, nested = self._stack.pop()
            elapsed = time.perf_counter() - start
            if self._stack:
                self._stack[-1][1] += elapsed
            if self.samples:
                current = self.samples[-1]
                current[name] = current.get(name, 0.0) + elapsed - nested

    @contextmanager
    def request(self) -> Iterator[None]:
        """Open a sample; its own time (outside every wrapped step) is REQUEST."""
        self.samples.append({})
        with self.stage(REQUEST):
            yield

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time every call of ``owner.attribute`` as stage name (on the instance only)."""
        function = getattr(owner, attribute, None)
        if function is None:
            return
        self._wrapped.append((owner, attribute, function, attribute in vars(owner)))
        setattr(owner, attribute, Timed(function, self, name))

    def unwrap(self) -> None:
        """Give every wrapped owner its own attribute back."""
        while self._wrapped:
            owner, attribute, function, own = self._wrapped.pop()
            if own:
                setattr(owner, attribute, function)
            else:
                delattr(owner, attribute)  # the class's method shows again

    def summary(self, skip: int = 0) -> dict[str, Any]:
        """Return per stage and in total the median and p95 in ms, over samples after skip."""
        samples = self.samples[skip:]
        result: dict[str, Any] = {'requests': len(samples), 'stages_ms': {}}
        for name in STAGES:
            values = [sample.get(name, 0.0) * 1e3 for sample in samples]
            if any(values):
                result['stages_ms'][name] = {'p50': percentile(values, 0.5),
                                             'p95': percentile(values, 0.95)}
        totals = [sum(sample.values()) * 1e3 for sample in samples]
        result['total_ms'] = {'p50': percentile(totals, 0.5), 'p95': percentile(totals, 0.95)}
        result['fps'] = 1e3 / result['total_ms']['p50'] if totals else None
        return result


class Timed:
    """A callable timed as a stage; its other attributes are the wrapped object's."""

    def __init__(self, wrapped: Callable[..., Any], timer: StageTimer, stage: str) -> None:
        """Time each call of wrapped as timer's stage."""
        self._wrapped = wrapped
        self._timer = timer
        self._stage = stage

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped object inside the stage."""
        with self._timer.stage(self._stage):
            return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Read what is not the wrapper's own from the wrapped object (a processor's size)."""
        if name == '_wrapped':  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self._wrapped, name)


def percentile(values: Sequence[float], fraction: float) -> Optional[float]:
    """Return the nearest-rank percentile of values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def instrument(backend: Any, timer: StageTimer) -> None:
    """Wrap the STEPS a backend has (preprocessing, image and text encoders) in timer's stages."""
    for path, stage in STEPS:
        *parents, attribute = path.split('.')
        owner = backend
        for name in parents:
            owner = getattr(owner, name, None)
        if owner is not None:
            timer.wrap(owner, attribute, stage)


def render_frames(count: int, width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """Return (count, height, width, 3) uint8 RGB frames of the drifting shapes world."""
    from vlm_perception.shapes.drift import DriftingScene

    scene = DriftingScene(np.random.default_rng(seed), width, height)
    return np.stack([scene.step(0.1) for _ in range(count)])


class Converter:
    """The node's image conversion and result publishing steps, timed; Frame checks without ROS."""

    def __init__(self, timer: StageTimer) -> None:
        """Use ROS conversions and serialisation where importable."""
        self.timer = timer
        try:
            from rclpy.serialization import serialize_message
            from std_msgs.msg import Header

            from vlm_perception.ros import conversions
        except ImportError:
            self.ros = None
        else:
            self.ros = (conversions, serialize_message, Header())

    def frame(self, engine: Any, rgb: np.ndarray) -> Any:
        """Return the engine's Frame of rgb, going through an Image message where ROS is."""
        with self.timer.stage('image conversion'):
            if self.ros is not None:
                conversions, _, header = self.ros
                rgb = conversions.image_to_rgb(conversions.rgb_to_image(rgb, header))
            return engine.frame(rgb)

    def publish(self, result: Any) -> None:
        """Convert a result (detections, tags, an answer or a caption) and serialise it."""
        if self.ros is None:
            return
        conversions, serialize, header = self.ros
        with self.timer.stage('publishing'):
            if isinstance(result, list) and result and hasattr(result[0], 'center_x'):
                serialize(conversions.detections_to_msg(result, header))
            elif hasattr(result, 'answer'):
                serialize(conversions.answer_to_msg('', result.question, header, result))
            else:
                from std_msgs.msg import String

                serialize(String(data=str(result)))


def calibrated_threshold(engine: Any, frame: Any, labels: Sequence[str]) -> float:
    """Return the score that lets about TARGET_BOXES boxes through on a frame."""
    scores = sorted((d.score for d in engine.detect(frame, labels, threshold=0.0)), reverse=True)
    return float(scores[TARGET_BOXES - 1]) if len(scores) >= TARGET_BOXES else 0.0


def timed_requests(engine: Any, capability: str, frames: Sequence[np.ndarray],
                   request: Callable[[Any], Any], warmup: int = 1) -> dict[str, Any]:
    """Run request(frame) once per frame (a fresh Frame each), timed per stage."""
    timer = StageTimer()
    instrument(engine.backend(capability), timer)
    converter = Converter(timer)
    try:
        for rgb in frames:
            with timer.request():
                frame = converter.frame(engine, rgb)
                converter.publish(request(frame))
    finally:
        timer.unwrap()
    return timer.summary(skip=warmup)


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> Optional[float]:
    """Return the ratio of two summaries' median total times."""
    top, bottom = numerator['total_ms']['p50'], denominator['total_ms']['p50']
    return None if not top or not bottom else top / bottom
