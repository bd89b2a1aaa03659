"""
The engine over every image of a recording, into a new recording: ``run_bag``.

Per image (raw or compressed), as the node's stream does: detect, mask (segment), place in 3D
with the paired depth image and camera_info; ``detections`` (and ``detections_3d`` where
vision_msgs is known and depth is read) each frame, ``scene`` and ``scene_text`` every
scene_period of bag time, each stamped with the image's header and written at the image's log
time. The input's topics are copied as they are (an input topic named as an output is replaced
by it). With a memory path, each scene is offered to a SQLite scene memory as the node's are.

``should_stop`` is asked between frames: when it says so (Ctrl-C), the images not done and
the input after the last one done are left out, and the recording is closed, valid.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import time
from typing import Any, Callable, Optional

from vlm_perception.bag import topics as bag_topics
from vlm_perception.bag.pairing import DepthPairing, HeldImage
from vlm_perception.bag.reader import BagReadError, InputBag
from vlm_perception.bag.settings import BagSettings
from vlm_perception.bag.typestore import BagTypes, load_types
from vlm_perception.bag.writer import OutputBag, qos
from vlm_perception.core import message_layout as layout
from vlm_perception.core.depth import PinholeCamera, place_all
from vlm_perception.core.errors import InputError, OutOfMemory
from vlm_perception.core.image import decode_compressed
from vlm_perception.core.memory import MemoryConfig, MemoryEntry, MemoryStoreError, SceneMemory
from vlm_perception.core.types import Detection, SceneDescription

MEMORY_FLUSH_S = 60.0  # the longest wait for the memory's queue to drain


@dataclass
class BagReport:
    """What a run did: frames done of the recording's, time, messages written per topic."""

    source: Path
    output: Path
    storage: str
    total: int
    frames: int = 0                 # images done (processed or skipped)
    skipped: int = 0                # images that could not be used
    unplaced: int = 0               # frames without a paired depth image or camera_info
    seconds: float = 0.0            # from the first image read to the output closed
    interrupted: bool = False
    outputs: list[str] = field(default_factory=list)         # the run's own topics
    written: dict[str, int] = field(default_factory=dict)    # messages per topic, copies too
    memory: Optional[dict[str, int]] = None

    @property
    def rate(self) -> float:
        """Return frames per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        result = {'input': str(self.source), 'output': str(self.output),
                  'storage': self.storage, 'frames': self.frames, 'total': self.total,
                  'skipped': self.skipped, 'unplaced': self.unplaced,
                  'seconds': round(self.seconds, 3), 'frames_per_second': round(self.rate, 3),
                  'interrupted': self.interrupted, 'outputs': list(self.outputs),
                  'written': dict(self.written)}
        if self.memory is not None:
            result['memory'] = dict(self.memory)
        return result


class _Memory:
    """A SQLite scene memory filled from the run's scenes, as the node's memory is."""

    def __init__(self, settings: BagSettings, source: str) -> None:
        try:
            self.memory = SceneMemory(MemoryConfig(path=settings.memory,
                                                   period_s=settings.memory_period,
                                                   change=settings.memory_change))
        except MemoryStoreError as error:
            raise InputError(f'scene memory: {error}') from error
        self.source = source

    def offer(self, engine: Any, frame: Any, rgb: Any, stamp_ns: int, frame_id: str,
              scene: SceneDescription, tags: bool) -> None:
        """Offer a scene: the offline run waits for the queue rather than drop a scene."""
        if stamp_ns < 0:
            return  # no time window could find a scene from before 1970
        embedding = engine.scene_embedding(frame) if tags else None
        writer = self.memory.writer
        if writer.pending >= writer.queue_size:
            writer.flush(MEMORY_FLUSH_S)
        self.memory.offer(MemoryEntry(
            stamp_ns=stamp_ns, frame_id=frame_id, source=self.source, caption=scene.caption,
            tags=[(tag.label, float(tag.score)) for tag in scene.tags],
            detections=[dataclasses.replace(item, mask=None) for item in scene.detections],
            embedding=embedding,
            tagger_model_id=engine.model_ids['tags'] if embedding is not None else ''), rgb)

    def close(self) -> dict[str, int]:
        """Write what is queued, close the store; return its counts."""
        self.memory.close(MEMORY_FLUSH_S)
        stats = self.memory.stats()
        return {name: stats[name]
                for name in ('offered', 'kept', 'written', 'dropped', 'failed')}


class BagRun:
    """One run: the input, the output, the pairing of images and depth, the engine's outputs."""

    def __init__(self, source: InputBag, out: Path, engine: Any, settings: BagSettings,
                 types: BagTypes, notice: Callable[[str], None]) -> None:
        """Resolve the topics and check the settings; nothing is written yet."""
        self.source, self.engine, self.types, self.notice = source, engine, types, notice
        self.settings = settings.checked()
        self.topics = bag_topics.resolve(
            source.topics, f"bag '{source.path}'", settings.image_topic, settings.depth_topic,
            settings.camera_info_topic, settings.out_namespace)
        self.capabilities = tuple(dict.fromkeys(settings.capabilities))
        self.use_depth = bool(self.topics.depth) and 'detect' in self.capabilities
        self.out = Path(out).expanduser()
        if self.out.exists():  # before any model loads
            raise InputError(f"'{self.out}' exists already: choose another output or remove it")
        self.storage = settings.storage or source.storage
        self.report = BagReport(source.path, self.out, self.storage,
                                source.count(self.topics.image))
        self.pairing = DepthPairing(self.use_depth, settings.depth_slop)
        self.camera: Optional[PinholeCamera] = None
        self._last_scene_ns: Optional[int] = None
        self._warned: set[str] = set()
        self.output: Optional[OutputBag] = None
        self.memory: Optional[_Memory] = None
        self._copies: dict[int, Any] = {}
        self._outputs: dict[str, Any] = {}
        self._undone_ns: Optional[int] = None  # log time of the first image left undone

    # --- set-up -------------------------------------------------------------------------------

    def _open_output(self) -> None:
        """Create the output: the input's connections, then the outputs'."""
        self.output = OutputBag(self.out, self.storage, self.types)
        names = {name: self.topics.output(name) for name in self._output_names()}
        for connection in self.source.connections:
            if connection.topic in names.values():
                self._once(f'replaced:{connection.topic}', 'the input topic '
                           f"{connection.topic} is replaced by this run's")
                continue
            copy = self.output.add_copy(connection)
            if copy is None:
                self._once(f'type:{connection.msgtype}', f'{connection.topic} not copied: no '
                           f'definition of {connection.msgtype} in the bag or the type store')
            else:
                self._copies[connection.id] = copy
        kinds = {'detections': 'vlm_perception/msg/DetectionArray',
                 'scene': 'vlm_perception/msg/SceneDescription',
                 'scene_text': 'std_msgs/msg/String',
                 'detections_3d': 'vision_msgs/msg/Detection3DArray'}
        for name, topic in names.items():  # QoS as the node offers them
            self._outputs[name] = self.output.add_topic(topic, kinds[name],
                                                        qos(1, True) if name == 'scene'
                                                        else qos(10))
        self.report.outputs = list(names.values())

    def _output_names(self) -> list[str]:
        names = ['detections'] if 'detect' in self.capabilities else []
        if self.use_depth and self.types.vision_msgs:
            names.append('detections_3d')
        return [*names, 'scene', 'scene_text']

    def _once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.notice(text)

    # --- the loop -----------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] = lambda done, total: None,
            should_stop: Callable[[], bool] = lambda: False) -> BagReport:
        """
        Run over the recording; return the report (the output is closed, valid, whatever).

        ``progress(done, total)`` is called at the start and after each frame.
        """
        if self.use_depth and not self.types.vision_msgs:
            self.notice('vision_msgs is not installed (no share/vision_msgs found): no '
                        'detections_3d, positions are in detections')
        if self.topics.depth and not self.use_depth:
            self.notice('depth is not read: detect is not among the capabilities')
        if self.use_depth and not self.topics.camera_info:
            self.notice('no camera_info beside the image topic (--camera-info-topic names '
                        'one): detections are not placed in 3D')
        if self.settings.memory:
            self.memory = _Memory(self.settings, f'{self.source.name}:{self.topics.image}')
        start = time.perf_counter()
        failure: Optional[InputError] = None
        try:
            self._open_output()
            progress(0, self.report.total)
            failure = self._loop(progress, should_stop)
        finally:
            self._finish()
            self.report.seconds = time.perf_counter() - start
        if failure is not None:
            raise InputError(f'{failure} (the output {self.out} holds the '
                             f'{self.report.frames} frames before it)') from failure
        return self.report

    def _loop(self, progress: Callable[[int, int], None],
              should_stop: Callable[[], bool]) -> Optional[InputError]:
        """Read, process and queue until the end or a stop; return a reading error."""
        try:
            for connection, log_ns, data in self.source.messages():
                if should_stop():
                    self.report.interrupted = True
                    return None
                copy = self._copies.get(connection.id)
                if copy is not None:
                    self.output.queue(copy, log_ns, data)
                if not self._process_all(self._read(connection.topic, log_ns, data), progress,
                                         should_stop):
                    return None
                self.output.flush(self._safe_until(log_ns))
        except BagReadError as error:
            return error
        self._process_all(self.pairing.drain(), progress, should_stop)
        return None

    def _process_all(self, images: list[HeldImage], progress: Callable[[int, int], None],
                     should_stop: Callable[[], bool]) -> bool:
        """Process images in order; False, the first left undone noted, when told to stop."""
        for index, image in enumerate(images):
            if index and should_stop():
                self.report.interrupted = True
                self._undone_ns = image.log_ns
                return False
            self._process(image, progress)
        if images and should_stop():
            self.report.interrupted = True
            return False
        return True

    def _safe_until(self, log_ns: int) -> int:
        """Return the bag time up to which the output can be written: no held image before."""
        held = self.pairing.oldest_held_ns
        return log_ns if held is None else min(log_ns, held)

    def _read(self, topic: str, log_ns: int, data: bytes) -> list[HeldImage]:
        """Take a message of a topic the run reads; return the images now released."""
        if topic == self.topics.image:
            kind = bag_topics.COMPRESSED if self.topics.compressed else bag_topics.IMAGE
            try:  # from a copy: the pixels are then writable, as torch wants them
                message = self.types.deserialize(bytearray(data), kind)
            except InputError as error:  # counted as a frame done, though not done
                self.report.frames += 1
                self._skip(error, log_ns)
                return self.pairing.advance(log_ns)
            return self.pairing.add_image(HeldImage(log_ns, layout.stamp_ns(message.header.stamp),
                                                    message.header, message))
        if topic == self.topics.depth and self.use_depth:
            try:
                message = self.types.deserialize(data, bag_topics.IMAGE)
                depth = layout.read_depth(message, self.settings.depth_scale)
            except InputError as error:
                self._once('depth', f'depth images not used: {error}')
                return self.pairing.advance(log_ns)
            return self.pairing.add_depth(layout.stamp_ns(message.header.stamp), depth, log_ns)
        if topic == self.topics.camera_info and self.use_depth:
            try:
                self.camera = layout.read_camera(
                    self.types.deserialize(data, bag_topics.CAMERA_INFO))
            except InputError as error:
                self._once('camera_info', f'camera_info not used: {error}')
        return self.pairing.advance(log_ns)

    def _skip(self, error: Exception, log_ns: int) -> None:
        """Count an image that could not be used; say why, once per kind of error."""
        self.report.skipped += 1
        self._once(f'skip:{type(error).__name__}', f'frames skipped ({error}); the first at '
                   f'bag time {log_ns / 1e9:.3f} s')

    # --- one frame ----------------------------------------------------------------------------

    def _process(self, image: HeldImage, progress: Callable[[int, int], None]) -> None:
        """Run the engine on one image and queue its outputs at the image's log time."""
        self.report.frames += 1
        try:
            rgb = (decode_compressed(image.message.data) if self.topics.compressed
                   else layout.read_rgb(image.message))
            self._outputs_of(image, rgb)
        except (InputError, OutOfMemory) as error:
            self._skip(error, image.log_ns)
        image.message = None  # its pixels are no longer needed
        progress(self.report.frames, self.report.total)

    def _outputs_of(self, image: HeldImage, rgb: Any) -> None:
        engine, capabilities, make = self.engine, self.capabilities, self.types.make
        frame = engine.frame(rgb)
        detections: list[Detection] = []
        if 'detect' in capabilities:
            detections = engine.detect(frame)
            if 'segment' in capabilities and detections:  # masks first: depth uses them
                detections = engine.segment(frame, detections)
            if self.use_depth:
                detections = self._placed(image, detections, rgb.shape[1], rgb.shape[0])
            self.output.queue_message(self._outputs['detections'], image.log_ns,
                                      layout.detection_array(make, detections, image.header))
            if 'detections_3d' in self._outputs:
                self.output.queue_message(self._outputs['detections_3d'], image.log_ns,
                                          layout.detections_3d(make, detections, image.header))
        if self._scene_due(image.log_ns):
            scene = engine.describe(frame, caption='caption' in capabilities,
                                    tags='tags' in capabilities, detect='detect' in capabilities,
                                    detections=detections)
            self.output.queue_message(self._outputs['scene'], image.log_ns,
                                      layout.scene_description(make, scene, image.header))
            self.output.queue_message(self._outputs['scene_text'], image.log_ns,
                                      make('std_msgs/msg/String', data=scene.summary))
            if self.memory is not None:
                self.memory.offer(engine, frame, rgb, image.stamp_ns, image.header.frame_id,
                                  scene, 'tags' in capabilities)

    def _placed(self, image: HeldImage, detections: list[Detection], width: int,
                height: int) -> list[Detection]:
        depth = self.pairing.depth_for(image)
        if depth is None or self.camera is None:
            self.report.unplaced += 1
            return detections
        return place_all(detections, depth, self.camera, width, height,
                         self.settings.min_depth, self.settings.max_depth)

    def _scene_due(self, log_ns: int) -> bool:
        """Whether a scene is due at this bag time (bag time going back counts as due)."""
        last = self._last_scene_ns
        if last is None or log_ns < last or log_ns - last >= self.settings.scene_period * 1e9:
            self._last_scene_ns = log_ns
            return True
        return False

    # --- the end ------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Close the output (leaving out the input after the last frame done) and the memory."""
        try:
            if self.output is not None:
                undone = [stamp for stamp in (self._undone_ns, self.pairing.oldest_held_ns)
                          if stamp is not None]
                if undone:  # stopped: images not done, and the input from them on
                    self.output.discard(min(undone) - 1)
                self.output.close()
                self.report.written = dict(self.output.counts)
        finally:
            if self.memory is not None:
                self.report.memory = self.memory.close()


def run_bag(source: str | Path, out: str | Path, engine: Any,
            settings: Optional[BagSettings] = None,
            progress: Callable[[int, int], None] = lambda done, total: None,
            should_stop: Callable[[], bool] = lambda: False,
            notice: Callable[[str], None] = lambda text: None,
            types: Optional[BagTypes] = None) -> BagReport:
    """
    Run the engine over every image of the recording ``source`` into ``out``; return a report.

    The recording and topics are checked first, then the models load (not timed), then the
    run. InputError (one line) for a recording that cannot be read, a missing topic, an output
    that exists; ``notice`` gets one-line notes (no vision_msgs, frames skipped, ...).
    """
    recording = InputBag(source)
    try:
        run = BagRun(recording, Path(out), engine, settings or BagSettings(),
                     types or load_types(), notice)
        engine.load(run.capabilities)
        return run.run(progress, should_stop)
    finally:
        recording.close()
