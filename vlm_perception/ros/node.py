"""
Perception node: open-vocabulary detection, tags, captions and answers about a camera stream.

The image callback only keeps the newest frame; inference runs on the newest frame whenever the
previous one is done, so the node is never behind the camera (older frames are dropped and
counted). Every output carries the header (stamp, frame_id) of the image it is about.

Several cameras (parameter cameras, e.g. [left, right]): camera N has the camera topics below
under N/ (N/image, N/depth, N/camera_info -> N/detections, ..., N/markers) and the root ones are
not used; whichever cameras have a new frame when inference is free are detected in one batch
(one image-encoder call where the detector allows), none waiting for another. Requests and
questions name their camera (empty = the first). Empty cameras: one camera on the root topics.

Subscriptions (the camera ones per camera, under N/ with cameras):
    image (sensor_msgs/Image): camera frames; rgb8, bgr8, rgba8, bgra8, mono8, mono16, ...
        With compressed: true, <resolved image topic>/compressed (sensor_msgs/CompressedImage)
        instead, as image_transport names it. Depth 1, reliability from image_reliability.
    questions (vlm_perception/Question): visual questions about the latest frame.
    depth (sensor_msgs/Image), with use_depth: 16UC1 (units of depth_scale metres) or 32FC1
        (metres), registered to the image (any resolution with the same field of view); the
        last second (at most 30) is kept, each processed frame pairs with the one nearest in
        stamp within depth_slop. Same QoS as image. compressedDepth is not supported.
    camera_info (sensor_msgs/CameraInfo), with use_depth: intrinsics of the colour image.

Published Topics (all but answers and /diagnostics per camera, under N/ with cameras):
    detections (vlm_perception/DetectionArray): every processed frame; with segment in
        capabilities each detection carries its mask (mono8, over its box).
    detections_2d (vision_msgs/Detection2DArray): the same, class_id = label text; only where
        vision_msgs is installed.
    scene (vlm_perception/SceneDescription): every scene_period, caption + tags + detections.
    scene_text (std_msgs/String): the summary of each scene.
    answers (vlm_perception/Answer): one per Question, id echoed.
    image_annotated (sensor_msgs/Image): boxes, labels and caption drawn; rendered only while
        someone subscribes.
    detections_3d (vision_msgs/Detection3DArray), with use_depth where vision_msgs is
        installed: placed detections, class_id = label text, bbox in metres, in target_frame.
    markers (visualization_msgs/MarkerArray): the summary as text in the camera frame (each
        scene), and per placed detection a box of its metric size and a label, in target_frame
        (each processed frame; they expire after two processing periods).
    /diagnostics (diagnostic_msgs/DiagnosticArray): input and processed rates, dropped frames and
        rejected inputs by cause, latency per capability, device, model state; once a second.
        One status, '<node>: perception'; with cameras, one per camera ('<node>: camera N',
        its stream) besides it (requests and questions).

Services (query, locate and questions take a camera name; empty = the first camera):
    query (vlm_perception/QueryScene): describe the latest frame (labels, caption, question),
        failing when it is older than max_age.
    set_labels (vlm_perception/SetLabels): replace the detection vocabulary (sets labels).
    locate (vlm_perception/Locate): find one phrase in the latest frame and place it in 3D;
        the point in target_frame (through tf2) when set, else the camera frame.
    recall (vlm_perception/Recall): the remembered scenes (memory_* parameters) that match a
        text, best first: exact detected labels, then by tag-model embedding.

    Lifecycle (rclpy.lifecycle): change_state, get_state and the other managed-node services.
        With autostart (default) the node configures and activates itself at start.

Parameters (declared in vlm_perception.ros.parameters, defaults in config/params.yaml):
    device, dtype, cameras, compressed, image_reliability, warmup, compile, autostart,
    use_depth, max_pending_queries, max_pending_questions, tag_resize_mode, memory_path,
    memory_url, memory_max_entries, memory_max_bytes, memory_period, memory_change,
    memory_queue (read-only); preset,
    detector_model, tagger_model, vqa_model, captioner_model, segmenter_model (one per slot of
    vlm_perception.core.slots; settable at run time: the new model loads beside the one
    serving and is swapped in when ready; if it fails the old one stays and the parameter is
    set back; the former names classifier_model and caption_model set the new ones, with a
    warning); capabilities, labels, detection_threshold, scene_period, max_rate,
    max_image_age, image_timeout, depth_scale, min_depth, max_depth, depth_slop, target_frame,
    tf_timeout, and the model options of vlm_perception.core.options (detection_templates,
    tag_templates, vqa_max_new_tokens, caption_max_new_tokens, num_beams, caption_prompt)
    (settable at run time; bad values are rejected).

Environment (test and diagnosis hooks, never parameters; unset in normal use):
    VLM_PERCEPTION_ADDED_LATENCY: seconds of sleep added to each processed frame, to mimic a
        slow device (the frame-dropping tests use it).
    VLM_PERCEPTION_INJECT_OOM: out-of-memory faults, e.g. call:3 (every third model call) or
        load:1 (every model load); see vlm_perception.core.faults.
"""

from contextlib import contextmanager
import dataclasses
import difflib
from functools import partial
import gc
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from vlm_perception import msg, srv
from vlm_perception.core import image as core_image
from vlm_perception.core.depth import RigidTransform
from vlm_perception.core.engine import clean_labels, clean_text, EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError, ModelLoadError, OutOfMemory
from vlm_perception.core.frame import Frame
from vlm_perception.core.memory import (MemoryConfig, MemoryEntry, MemoryStoreError,
                                        SceneMemory)
from vlm_perception.core.options import ModelOptions, OPTION_NAMES
from vlm_perception.core.summary import summarize
from vlm_perception.core.types import Detection, SceneDescription
from vlm_perception.ros import conversions, parameters
from vlm_perception.ros.cameras import CameraStream, DEPTH_SPAN_S, MIN_STARVED_PERIOD_S
from vlm_perception.ros.diagnostics import PerceptionStats, Throttle
from vlm_perception.ros.publisher_check import type_name, UnheardPublishers
from vlm_perception.ros.stream import (age_verdict, check_max_age, image_age, RateLimiter,
                                       SourceFrame)
from vlm_perception.ros.visualization import annotate

try:
    import tf2_ros
except ImportError:  # the PyPI ROS wheels have no tf2; target_frame is refused then
    tf2_ros = None

NODE_NAME = 'vlm_perception'
DEPTH_SETTINGS = ('depth_scale', 'min_depth', 'max_depth', 'depth_slop', 'target_frame',
                  'tf_timeout')
ADDED_LATENCY_ENV = 'VLM_PERCEPTION_ADDED_LATENCY'
THROTTLE_S = 5.0
# The node's five callback groups (one camera), its default one and tf2's listener; each further
# camera adds its image group.
EXECUTOR_THREADS = 6
# While the stream infers, the image callback waits (at most this long) for it to finish, so that
# newer frames wait in DDS (the newest only, depth 1) instead of waking the executor each.
HOLD_WHILE_INFERRING_S = 1.0
# The stream waits (at most this long) for the image callbacks that hold a frame to keep it, so
# that frames which arrived together are batched together.
INTAKE_WAIT_S = 0.05
QUESTION_INTAKE_FACTOR = 10  # subscription depth per queued question
QUESTION_BATCH = 8  # queued questions on one camera answered in one engine call, at most
STOP_JOIN_S = 5.0  # the stream and question threads finish what they hold, at most this long
_PARAMETER_TYPES = {'string': ParameterType.PARAMETER_STRING,
                    'bool': ParameterType.PARAMETER_BOOL,
                    'integer': ParameterType.PARAMETER_INTEGER,
                    'double': ParameterType.PARAMETER_DOUBLE,
                    'string_array': ParameterType.PARAMETER_STRING_ARRAY}


class FrameUnavailable(Exception):
    """No frame to answer about: none received yet, or the latest is too old."""


class LocateFailure(Exception):
    """Why locate has no point; the message starts with the reason's keyword."""


class NotActive(Exception):
    """The node is not active (lifecycle): requests are answered so, not served."""


def descriptor(spec: parameters.ParameterSpec) -> ParameterDescriptor:
    """Return the ParameterDescriptor of a parameter spec."""
    result = ParameterDescriptor(name=spec.name, type=_PARAMETER_TYPES[spec.kind],
                                 description=spec.description, read_only=spec.read_only)
    if spec.limits is not None and spec.kind == 'integer':
        result.integer_range = [IntegerRange(from_value=spec.limits[0], to_value=spec.limits[1],
                                             step=1)]
    elif spec.limits is not None:
        result.floating_point_range = [FloatingPointRange(
            from_value=spec.limits[0], to_value=spec.limits[1], step=0.0)]
    if spec.choices:
        result.additional_constraints = f'one of {", ".join(spec.choices)}'
    return result


def freeze_heap() -> None:
    """
    Keep the objects alive now (models, tokenizers, modules) out of later garbage collections.

    A full collection walks every tracked object: with transformers' models loaded that holds
    the GIL for 100-170 ms (measured with OWL-ViT B/32 on the CPU), a stall of the stream
    between two tensor operations every several seconds. Frozen objects are not walked; they
    are still freed by reference counting (unfreeze before a model is dropped, so that its
    reference cycles can be collected).
    """
    gc.collect()
    gc.freeze()


class PerceptionNode(LifecycleNode):
    """
    Run the perception engine on the newest camera frame; answer queries and questions.

    A managed node: configure loads the models, activate subscribes and streams, deactivate
    stops inference and keeps the models, cleanup unloads them. Requests are served in every
    state (not active: the reply says so); only /diagnostics is published while not active.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in (*parameters.SPECS, *parameters.OLD_SPECS):
            self.declare_parameter(spec.name, _declared_default(spec), descriptor(spec))
        self._warned_old: set[str] = set()  # deprecated parameter names warned about
        self._move_old_overrides()
        for spec in parameters.SPECS:
            if self._is_set(spec.name):
                reason = parameters.check(spec.name, self._value(spec.name))
                if reason:
                    raise InputError(f'parameter {reason}')
        reason = (parameters.check_depth_range(self._value('min_depth'), self._value('max_depth'))
                  or _tf_unavailable(self._value('target_frame')))
        if reason:
            raise InputError(f'parameter {reason}')

        names = self._value('cameras') if self._is_set('cameras') else []
        # one camera: its counters are the node's (one status, as ever); several: one each
        self.stats = PerceptionStats(stream=not names)
        self._warnings = Throttle(THROTTLE_S)
        self._unheard = UnheardPublishers()
        self._added_latency = float(os.environ.get(ADDED_LATENCY_ENV, '0') or 0)
        self._stopping = threading.Event()
        self._state = 'unconfigured'  # the lifecycle state label, once a transition is done
        self._active = threading.Event()  # the stream runs; requests are served
        self._stream_busy = threading.Lock()  # held while the stream processes a frame
        self._inference = threading.Condition()  # notified when the stream's inference ends
        self._inferring = False
        self._taking = 0  # image callbacks with a frame in hand, not kept yet
        self.configure_error: Optional[Exception] = None
        self._wakeup = threading.Event()  # the stream's rate wait ends early: stop, new max_rate
        self._rate = RateLimiter(self._value('max_rate'))
        self._capabilities = tuple(self._value('capabilities'))
        self._threshold = self._value('detection_threshold')
        self._max_image_age = self._value('max_image_age')
        self._use_depth = self._value('use_depth')
        self._depth = {name: self._value(name) for name in DEPTH_SETTINGS}  # settable at run time
        self._tf_buffer = tf2_ros.Buffer() if tf2_ros is not None else None
        # on this node's executor: a thread of its own would spin the node in a second
        # executor, which rclpy refuses, and leaves a thread behind at exit (geometry2 #930)
        self._tf_listener = (tf2_ros.TransformListener(self._tf_buffer, self)
                             if tf2_ros is not None else None)
        self._engine: Optional[PerceptionEngine] = None  # made and loaded by configure
        # compressed frames: nvjpeg into the models' GPU memory when they run on CUDA
        self._decode: Callable[[bytes], Any] = core_image.decode_compressed
        self._memory: Optional[SceneMemory] = None  # opened by configure (and activate)
        self._memory_lock = threading.Lock()  # open and close against the stream and recall
        self._memory_closed = {'written': 0, 'dropped': 0}  # of the memories closed so far
        self._warned_no_embedding = False
        self.stats.model_state = 'unconfigured'

        # Inference on the stream runs in a thread of its own, which the executor never schedules:
        # the executor only moves messages. One executor thread per group (EXECUTOR_THREADS), so
        # no group waits for another: queries wait for the engine, never the image callback.
        self._frame_ready = threading.Event()
        self._stream_thread = threading.Thread(target=self._stream, name='stream', daemon=True)
        # images: one group per camera (CameraStream.input_group), each keeps its newest frame
        self._depth_group = MutuallyExclusiveCallbackGroup()  # depth, camera_info: never held
        request_group = MutuallyExclusiveCallbackGroup()  # query and locate (use the engine)
        question_group = MutuallyExclusiveCallbackGroup()  # questions: only queued here
        control_group = MutuallyExclusiveCallbackGroup()  # set_labels, diagnostics

        # The stream's outputs (the cameras') publish only while active; answers (replies) and
        # diagnostics in every state.
        self._cameras = [CameraStream(self, name, PerceptionStats(shared=self.stats) if name
                                      else self.stats, self._use_depth,
                                      self._value('scene_period')) for name in names or ['']]
        self._camera_by_name = {camera.name: camera for camera in self._cameras}
        self._answers_pub = self.create_publisher(
            msg.Answer, 'answers',
            QoSProfile(depth=QUESTION_INTAKE_FACTOR * self._value('max_pending_questions')))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        # Questions are queued by their callback and answered by a thread of their own, so a
        # flood neither waits in DDS (where overflow is lost unanswered) nor blocks queries.
        pending_questions = self._value('max_pending_questions')
        self._questions: queue.Queue[Optional[msg.Question]] = queue.Queue(pending_questions)
        self._question_worker = threading.Thread(target=self._answer_questions,
                                                 name='questions', daemon=True)
        # DDS holds more than the queue, so that a burst reaches the callback and its overflow
        # is answered busy rather than dropped unseen (Questions are small).
        self.create_subscription(msg.Question, 'questions', self._on_question,
                                 QoSProfile(depth=QUESTION_INTAKE_FACTOR * pending_questions),
                                 callback_group=question_group)
        requests = QoSProfile(depth=self._value('max_pending_queries'))
        self.create_service(srv.QueryScene, 'query', self._on_query, qos_profile=requests,
                            callback_group=request_group)
        self.create_service(srv.Locate, 'locate', self._on_locate, qos_profile=requests,
                            callback_group=request_group)
        self.create_service(srv.Recall, 'recall', self._on_recall, qos_profile=requests,
                            callback_group=request_group)
        self.create_service(srv.SetLabels, 'set_labels', self._on_set_labels,
                            callback_group=control_group)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=control_group)
        for camera in self._cameras:
            camera.stats.image_timeout = self._value('image_timeout')
        self.create_timer(MIN_STARVED_PERIOD_S / 2, self._say_starved,
                          callback_group=control_group)
        # rclpy >= Iron can rewrite a change before it is stored; elsewhere unclean is refused
        self._cleans_parameters = hasattr(self, 'add_pre_set_parameters_callback')
        if self._cleans_parameters:
            self.add_pre_set_parameters_callback(self._clean_parameters)
        # A failed swap sets its parameter back, which must come after the change is stored.
        self._swaps: queue.Queue[threading.Thread] = queue.Queue()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if hasattr(self, 'add_post_set_parameters_callback'):
            self.add_post_set_parameters_callback(self._start_swaps)
        self._warn_unknown_overrides()

    def _move_old_overrides(self) -> None:
        """Give the value of a deprecated model parameter (classifier_model) to its new name."""
        moved = []
        for old, new in parameters.OLD_MODEL_PARAMETERS.items():
            value = self._value(old)
            if not value:
                continue
            if new in self._parameter_overrides:
                self._warn_old(old, new, f"'{new}' is set too, so '{old}' is ignored")
            else:
                self._warn_old(old, new)
                moved.append(Parameter(new, Parameter.Type.STRING, value))
            moved.append(Parameter(old, Parameter.Type.STRING, ''))
        if moved:
            self.set_parameters(moved)

    def _warn_old(self, old: str, new: str, more: str = '') -> None:
        """Warn, once per name, that a deprecated parameter name was used."""
        if old not in self._warned_old:
            self._warned_old.add(old)
            self.get_logger().warning(f"parameter '{old}' is deprecated, use '{new}' "
                                      f"({more or f'{old} sets {new}'})")

    def _warn_unknown_overrides(self) -> None:
        """Warn once per override that names no parameter (a typo); not fatal (/** files)."""
        declared = [spec.name for spec in parameters.SPECS]
        for name in self._parameter_overrides:
            if not self.has_parameter(name):
                close = difflib.get_close_matches(name, declared, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ''
                self.get_logger().warning(f"unknown parameter '{name}'{hint}: ignored")

    # --- lifecycle ----------------------------------------------------------------------------

    def start_threads(self) -> None:
        """Start the stream and question threads (they serve every state; once per node)."""
        self._stream_thread.start()
        self._question_worker.start()

    @property
    def executor_threads(self) -> int:
        """Return the threads its executor needs: one per callback group (each camera's too)."""
        return EXECUTOR_THREADS + len(self._cameras) - 1

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Make the engine and load (and warm up) the stream's models; FAILURE if they fail."""
        try:
            self._open_memory()  # first: a bad memory_* fails before minutes of model loading
            self._engine = PerceptionEngine(self._engine_config())
            self._load_models()
            freeze_heap()
        except (ModelLoadError, OutOfMemory, InputError) as error:
            self._engine = None
            self._close_memory()
            self.configure_error = error
            self.stats.model_state = f'failed: {error}'
            if not self._value('autostart'):  # with autostart, main() says it and exits
                self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        self._state = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the outputs, subscribe the camera and let the stream run."""
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        try:
            self._open_memory()  # again after a deactivate closed it
        except InputError as error:
            self.get_logger().error(f'activate failed: {error}')
            return TransitionCallbackReturn.FAILURE
        self._subscribe_images()
        for camera in self._cameras:  # image_timeout counts from now, not from the model load
            camera.stats.expect_images()
        self._active.set()
        self._state = 'active'
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop inference after the frame in hand; the models stay loaded."""
        self._state = 'inactive'
        self._pause()
        self._close_memory()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unload the models and forget the frames."""
        self._unload()
        self._close_memory()
        self._state = 'unconfigured'
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop what runs and unload, from whatever state."""
        self._state = 'finalized'
        self._pause()
        self._close_memory()
        self._unload()
        return super().on_shutdown(state)

    def _engine_config(self) -> EngineConfig:
        labels = self._value('labels') if self._is_set('labels') else None
        return EngineConfig(
            preset=self._value('preset'), device=self._value('device'),
            dtype=self._value('dtype'), labels=labels, compile=self._value('compile'),
            options=ModelOptions(**{name: self._value(name) for name in OPTION_NAMES}),
            **{name: self._value(name) or None for name in parameters.MODEL_PARAMETERS})

    def _load_models(self) -> None:
        """Load (and warm up) the models of the stream's capabilities; ModelLoadError if not."""
        capabilities = self._capabilities
        self.stats.model_state = 'loading'
        self.get_logger().info(f'loading models for {", ".join(capabilities) or "nothing"} '
                               f'(preset {self._value("preset")})')
        self._engine.load(capabilities=capabilities, warmup=self._value('warmup'))
        self.stats.device = self._engine.device
        self._decode = core_image.frame_decoder(self._engine.device, self.get_logger().warning)
        self.stats.model_state = 'ready'
        if self._value('device') == 'auto' and self._engine.device == 'cpu':
            self.get_logger().warning('device auto: no CUDA device found, running on the CPU')
        if not self._is_set('labels'):
            self.set_parameters([Parameter('labels', Parameter.Type.STRING_ARRAY,
                                           self._engine.labels)])
        loaded = ', '.join(f'{cap}: {model}' for cap, model in self._engine.loaded.items())
        self.get_logger().info(f'ready on {self._engine.device} ({loaded}); '
                               f'labels: {", ".join(self._engine.labels)}')

    def _open_memory(self) -> None:
        """Open the scene memory the memory_* parameters name; InputError saying why not."""
        with self._memory_lock:
            if self._memory is not None:
                return
            config = MemoryConfig(
                path=self._value('memory_path'), url=self._value('memory_url'),
                max_entries=self._value('memory_max_entries'),
                max_bytes=self._value('memory_max_bytes'),
                period_s=self._value('memory_period'), change=self._value('memory_change'),
                queue=self._value('memory_queue'))
            try:
                self._memory = SceneMemory(config)
            except MemoryStoreError as error:  # a database problem is the parameters' to fix
                raise InputError(f'scene memory: {error}') from error
            self.get_logger().info(f'scene memory: {self._memory.store.description}')

    def _close_memory(self) -> None:
        """Flush the memory's queue (at most 2 s; the rest is dropped and counted), close it."""
        with self._memory_lock:
            memory, self._memory = self._memory, None
            if memory is None:
                return
            dropped = memory.close(timeout=2.0)
            stats = memory.stats()
            self._memory_closed['written'] += stats['written']
            self._memory_closed['dropped'] += stats['dropped']
        if dropped:
            self.get_logger().warning(f'scene memory closed: {dropped} scenes not written')

    def _memory_values(self) -> dict[str, str]:
        """Return the memory's diagnostics values: scenes written and dropped (all so far)."""
        memory = self._memory
        none = {'written': 0, 'dropped': 0, 'pending': 0}
        stats = memory.stats() if memory is not None else none
        return {'memory written': str(self._memory_closed['written'] + stats['written']),
                'memory dropped': str(self._memory_closed['dropped'] + stats['dropped']),
                'memory pending': str(stats['pending'])}

    def _remember(self, camera: CameraStream, frame: SourceFrame, engine_frame: Frame,
                  scene: SceneDescription) -> None:
        """Offer a refreshed scene to the memory (queued: the stream never waits for it)."""
        memory, engine = self._memory, self._engine
        if memory is None or engine is None:
            return
        if frame.stamp_ns < 0:  # before 1970: no time window could find it
            self.get_logger().warning('scene not remembered: its image stamp is negative',
                                      throttle_duration_sec=10.0)
            return
        # the tagger's kept encoding of this frame: no model pass of its own
        embedding = (engine.scene_embedding(engine_frame) if 'tags' in self._capabilities
                     else None)
        if embedding is None and not self._warned_no_embedding:
            self._warned_no_embedding = True
            self.get_logger().warning('scene memory without tag embeddings (tags not in '
                                      'capabilities, or a tagger without them): recall '
                                      'matches detected labels only')
        frame_id, detections = frame.header.frame_id, scene.detections
        if self._depth['target_frame'] and any(item.position is not None
                                               for item in detections):
            try:
                frame_id, transform = self._target(frame.header)
            except LocateFailure:
                transform = conversions.IDENTITY  # positions stay in the camera frame
                frame_id = frame.header.frame_id
            if transform is not conversions.IDENTITY:
                detections = [dataclasses.replace(item, position=transform.apply(item.position))
                              if item.position is not None else item for item in detections]
        source = self.get_fully_qualified_name() + (f':{camera.name}' if camera.name else '')
        entry = MemoryEntry(
            stamp_ns=frame.stamp_ns, frame_id=frame_id, source=source, caption=scene.caption,
            tags=[(tag.label, float(tag.score)) for tag in scene.tags],
            detections=[dataclasses.replace(item, mask=None) for item in detections],
            embedding=embedding,
            tagger_model_id=engine.model_ids['tags'] if embedding is not None else '')
        memory.offer(entry, engine_frame.image)

    def _pause(self) -> None:
        """Stop taking images and wait for the frame being processed (the stream then waits)."""
        self._active.clear()
        self._release_held()
        for camera in self._cameras:
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
            camera.stats.expect_images(False)
            camera.stats.expect_depth(False)
        with self._stream_busy:
            for camera in self._cameras:
                camera.slot.take()

    def _unload(self) -> None:
        """Drop the engine (its models and caches) and every kept frame."""
        engine, self._engine = self._engine, None
        if engine is not None:
            gc.unfreeze()  # the models' own reference cycles may be collected again
            engine.unload()
        self.stats.model_state = 'unconfigured'
        for camera in self._cameras:
            camera.forget()

    def stop(self) -> None:
        """End the stream and question threads (each after the frame or question in hand)."""
        self._stopping.set()
        self._active.clear()
        self._release_held()
        self._wakeup.set()
        self._frame_ready.set()
        if self._stream_thread.is_alive():
            self._stream_thread.join(timeout=STOP_JOIN_S)
        self._close_memory()  # after the stream: its last scenes are flushed too
        if self._question_worker.is_alive():
            try:
                self._questions.put_nowait(None)  # the worker's signal to end
            except queue.Full:
                pass  # it sees _stopping after the question in hand
            self._question_worker.join(timeout=STOP_JOIN_S)

    # --- helpers ------------------------------------------------------------------------------

    def _value(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _is_set(self, name: str) -> bool:
        try:
            self.get_parameter(name)
        except ParameterUninitializedException:
            return False
        return True

    @contextmanager
    def _guarded(self, where: str, stats: Optional[PerceptionStats] = None) -> Iterator[None]:
        """Log and count (in stats, else the node's) any exception so no callback ends spin()."""
        try:
            yield
        except Exception as error:  # a callback must never kill the node
            if self._stopping.is_set() or not self.context.ok():
                # Ctrl-C: the node is being destroyed under a callback still running
                self.get_logger().debug(f'{where} at shutdown: {type(error).__name__}: {error}')
                return
            (stats or self.stats).record_error(where)
            if self._warnings.allow(f'error in {where}'):
                self.get_logger().error(f'{where}: {type(error).__name__}: {error}')

    def _reject(self, what: str, error: object, stats: Optional[PerceptionStats] = None) -> None:
        (stats or self.stats).record_rejected(what)
        if self._warnings.allow(what):  # throttled per cause, so that one cannot hide another
            self.get_logger().warning(f'rejected {what}: {error}')

    def _timed(self, capability: str, call: Callable[..., Any], *args: Any,
               stats: Optional[PerceptionStats] = None, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = call(*args, **kwargs)
        (stats or self.stats).record_latency(capability, time.perf_counter() - start)
        return result

    def _camera_for(self, name: str) -> CameraStream:
        """Return the camera a request names (empty: the first); InputError for an unknown one."""
        camera = self._camera_by_name.get(name) if name else self._cameras[0]
        if camera is not None:
            return camera
        if not self._cameras[0].name:
            raise InputError(f'unknown camera {name!r}: this node has one camera (its cameras '
                             'parameter is empty), so leave camera empty')
        raise InputError(f'unknown camera {name!r}: the cameras are '
                         f'{", ".join(camera.name for camera in self._cameras)}')

    def _frame_for(self, camera: CameraStream, max_age: float,
                   with_depth: bool = False) -> tuple[SourceFrame, float]:
        """
        Return the latest frame of a camera and its age; FrameUnavailable when none or too old.

        with_depth prefers the newest frame that has a depth image, when the latest has none
        (yet, or lost in transport) and that one is young enough and within the depth images
        kept (DEPTH_SPAN_S of the latest). InputError for an unusable max_age.
        """
        check_max_age(max_age)
        frame, paired = camera.latest()
        if frame is None:
            raise FrameUnavailable('no image received yet')
        now = self.get_clock().now().nanoseconds
        if with_depth and paired is not None and paired is not frame \
                and abs(frame.stamp_ns - paired.stamp_ns) <= DEPTH_SPAN_S * 1e9 \
                and not age_verdict(now, paired.stamp_ns, max_age):
            frame = paired
        if not camera.usable(frame):  # undecodable: the newest frame that decoded instead
            frame = camera.latest_good()
            if frame is None:
                raise FrameUnavailable('no usable image yet: every image received was rejected')
        age = image_age(now, frame.stamp_ns)
        verdict = age_verdict(now, frame.stamp_ns, max_age)
        if verdict == 'future':
            self._count_future(age, camera.stats)
            raise FrameUnavailable(f'stale: the latest image is stamped {-age:.2f} s ahead of '
                                   "this node's clock (future stamp), so no age limit holds")
        if verdict:
            raise FrameUnavailable(f'stale: the latest image is {age:.2f} s old, more than '
                                   f'{max_age:g} s')
        return frame, age

    def _count_future(self, age: float, stats: PerceptionStats) -> None:
        """Count and warn (once per THROTTLE_S) about an image stamped ahead of the clock."""
        stats.record_drop('future stamp')
        if self._warnings.allow('future stamp'):
            self.get_logger().warning(
                f'future stamp: an image is stamped {-age:.2f} s ahead of the node clock '
                '(camera and node clocks differ?); it fails every non-zero age limit')

    def _target(self, header: Any) -> tuple[str, RigidTransform]:
        """Return the frame of 3D outputs and the transform into it at the image's stamp."""
        target = self._depth['target_frame']
        if not target or target == header.frame_id or self._tf_buffer is None:
            return header.frame_id, conversions.IDENTITY
        try:
            stamped = self._tf_buffer.lookup_transform(
                target, header.frame_id, Time.from_msg(header.stamp),
                timeout=Duration(seconds=self._depth['tf_timeout']))
        except tf2_ros.TransformException as error:
            self.stats.record_error('tf')
            raise LocateFailure(f'transform: none from {header.frame_id or "(no frame_id)"} to '
                                f'{target} at the image stamp: {error}') from error
        translation, rotation = stamped.transform.translation, stamped.transform.rotation
        return target, RigidTransform((translation.x, translation.y, translation.z),
                                      (rotation.x, rotation.y, rotation.z, rotation.w))

    # --- images -------------------------------------------------------------------------------

    def _subscribe_images(self) -> None:
        reliability = (ReliabilityPolicy.RELIABLE if self._value('image_reliability') == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        for camera in self._cameras:
            self._subscribe(camera, qos)

    def _subscribe(self, camera: CameraStream, qos: QoSProfile) -> None:
        """Subscribe a camera's image (or its compressed topic), and depth and camera_info."""
        def subscribe(kind: Any, topic: str, callback: Callable[[Any], None],
                      group: MutuallyExclusiveCallbackGroup) -> Any:
            # No QoS event handlers (ros2/rmw_fastrtps#833): with them, a frame waiting for its
            # scheduled callback wakes the executor at once, again and again, until the
            # callback takes it; under inference that spun a core of two (measured). The
            # publishers' QoS and type are checked on the graph instead (_warn_unheard_publishers).
            return self.create_subscription(
                kind, topic, callback, qos, callback_group=group,
                event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))

        if self._value('compressed'):
            topic = self.resolve_topic_name(camera.topic('image')) + '/compressed'
            subscriptions = [subscribe(CompressedImage, topic,
                                       partial(self._on_compressed, camera), camera.input_group)]
        else:
            topic = camera.topic('image')
            subscriptions = [subscribe(Image, topic, partial(self._on_image, camera),
                                       camera.input_group)]
        self.get_logger().info(f'subscribed to {self.resolve_topic_name(topic)}')
        if self._use_depth:
            depth, info = camera.topic('depth'), camera.topic('camera_info')
            subscriptions += [
                subscribe(Image, depth, partial(self._on_depth, camera), self._depth_group),
                subscribe(CameraInfo, info, partial(self._on_camera_info, camera),
                          self._depth_group)]
            camera.stats.expect_depth()
            self.get_logger().info(f'depth from {self.resolve_topic_name(depth)}, intrinsics '
                                   f'from {self.resolve_topic_name(info)}')
        camera.subscriptions = subscriptions  # the image (or compressed) one first

    def _on_image(self, camera: CameraStream, image: Image) -> None:
        with self._taking_frame(), self._guarded('image', camera.stats):
            image = self._newest(camera, image)
            self._keep(camera, image.header, lambda: conversions.image_to_rgb(image), 'image')

    def _on_compressed(self, camera: CameraStream, image: CompressedImage) -> None:
        """Keep the newest compressed frame undecoded: it is decoded when taken, if ever."""
        with self._taking_frame(), self._guarded('compressed image', camera.stats):
            image = self._newest(camera, image)
            try:
                data = conversions.checked_compressed_data(image)
            except InputError as error:
                camera.stats.record_received()
                self._reject('compressed image', error, camera.stats)
                return
            decode = self._decode
            self._keep(camera, image.header, lambda: conversions.decode_checked(data, decode),
                       'compressed image', decode_now=False)

    def _on_depth(self, camera: CameraStream, image: Image) -> None:
        with self._guarded('depth', camera.stats):
            try:
                depth = conversions.depth_image(image, self._depth['depth_scale'])
            except InputError as error:
                self._reject('depth', error, camera.stats)
                return
            camera.add_depth(conversions.stamp_ns(image.header.stamp), depth,
                             self._depth['depth_slop'])
            camera.stats.record_depth()

    def _on_camera_info(self, camera: CameraStream, info: CameraInfo) -> None:
        with self._guarded('camera_info', camera.stats):
            try:
                intrinsics = conversions.pinhole_camera(info)
            except InputError as error:
                self._reject('camera_info', error, camera.stats)
                return
            if not intrinsics.distortion_supported:
                self.get_logger().warning(
                    f'camera_info distortion model {intrinsics.distortion_model!r} is not '
                    'supported: back-projecting with K only', once=True)
            camera.intrinsics = intrinsics

    def _keep(self, camera: CameraStream, header: Any, to_rgb: Callable[[], Any], what: str,
              decode_now: bool = True) -> None:
        """Make a received image the camera's newest frame (for the stream and queries)."""
        camera.stats.record_received()
        frame = SourceFrame(header, conversions.stamp_ns(header.stamp), to_rgb,
                            on_error=lambda error: self._reject(what, error, camera.stats))
        if decode_now and not camera.usable(frame):
            return  # rejected: the previous frame stays the newest
        camera.keep(frame, self._depth['depth_slop'])
        if camera.slot.put(frame):
            camera.stats.record_drop('superseded')
        self._frame_ready.set()

    def _newest(self, camera: CameraStream, message: Any) -> Any:
        """
        Return message, or the newer one that arrived while the stream was inferring.

        The image callback waits while the stream infers. Meanwhile its group is busy, so the
        executor leaves the image subscription out of its wait set: newer frames wait in DDS (the
        newest only, depth 1) instead of each waking the executor, which would compete with
        inference for the GIL and the cores. Once inference ends, the newest is taken here and
        the held message counts as superseded. Each camera has a group of its own, so each
        camera's callback holds its own frame.
        """
        if not self._hold_while_inferring():
            return message
        subscriptions = camera.subscriptions
        if not subscriptions:
            return message
        subscription = subscriptions[0]
        with subscription.handle:  # the executor takes no message of a busy group meanwhile
            taken = subscription.handle.take_message(subscription.msg_type, subscription.raw)
        if taken is None:
            return message
        camera.stats.record_received()
        camera.stats.record_drop('superseded')
        return taken[0]

    def _hold_while_inferring(self) -> bool:
        """Wait while the stream infers (at most HOLD_WHILE_INFERRING_S); return whether it did."""
        with self._inference:
            if not self._inferring:
                return False
            self._inference.wait_for(lambda: not self._inferring or not self._active.is_set(),
                                     timeout=HOLD_WHILE_INFERRING_S)
        return True

    @contextmanager
    def _taking_frame(self) -> Iterator[None]:
        """Count an image callback as one with a frame in hand until it returns."""
        with self._inference:
            self._taking += 1
        try:
            yield
        finally:
            with self._inference:
                self._taking -= 1
                self._inference.notify_all()

    def _await_intake(self) -> None:
        """
        Wait (at most INTAKE_WAIT_S) for the image callbacks with a frame in hand to keep it.

        Frames that arrived during inference are all in hand when it ends (held, see _newest):
        waiting for these few milliseconds batches them together, and takes each camera's
        newest rather than a frame kept before the inference began. A camera with no frame in
        hand is not waited for.
        """
        with self._inference:
            self._inference.wait_for(lambda: self._taking == 0 or self._stopping.is_set(),
                                     timeout=INTAKE_WAIT_S)

    def _stream(self) -> None:
        """Run the stream on each camera's newest frame, whenever one waits (own thread)."""
        while not self._stopping.is_set():
            self._frame_ready.wait()
            self._frame_ready.clear()
            with self._guarded('stream'):
                while (delay := self._rate.wait_time()) > 0 and not self._stopping.is_set():
                    self._wakeup.wait(delay)
                    self._wakeup.clear()
                self._await_intake()
                with self._stream_busy:  # deactivate waits for the frames in hand
                    taken = [(camera, frame) for camera in self._cameras
                             if (frame := camera.slot.take()) is not None]
                    if not self._active.is_set():
                        continue
                    taken = [(camera, frame) for camera, frame in taken if camera.usable(frame)]
                    if not taken:
                        continue
                    self._set_inferring(True)
                    try:
                        self._run_stream(taken)
                    finally:
                        self._set_inferring(False)

    def _set_inferring(self, inferring: bool) -> None:
        with self._inference:
            self._inferring = inferring
            self._inference.notify_all()

    def _release_held(self) -> None:
        """End the wait of an image callback held during inference (not active any more)."""
        with self._inference:
            self._inference.notify_all()

    def _count_out_of_memory(self, error: OutOfMemory,
                             stats: Optional[PerceptionStats] = None) -> None:
        (stats or self.stats).record_error('out of memory')
        if self._warnings.allow('out of memory'):
            self.get_logger().warning(f'{error}: the frame or request is skipped, caches '
                                      'trimmed; the node goes on')

    def _fresh(self, camera: CameraStream, frame: SourceFrame, now: int) -> bool:
        """Whether the stream may process frame at now (ns): not older than max_image_age."""
        age = image_age(now, frame.stamp_ns)
        verdict = age_verdict(now, frame.stamp_ns, self._max_image_age)
        if verdict == 'future':
            self._count_future(age, camera.stats)
            return False
        if verdict:
            camera.stats.record_drop('stale')
            self.get_logger().warning(
                f'skipping an image {age:.2f} s old (max_image_age {self._max_image_age:g} s)',
                throttle_duration_sec=THROTTLE_S)
            return False
        return True

    def _run_stream(self, taken: list[tuple[CameraStream, SourceFrame]]) -> None:
        """Detect in the frames taken (a camera's each) as one batch; publish per camera."""
        now = self.get_clock().now().nanoseconds
        taken = [(camera, frame) for camera, frame in taken if self._fresh(camera, frame, now)]
        if not taken:
            return
        self._rate.mark()
        if self._added_latency:
            time.sleep(self._added_latency)
        capabilities, engine = self._capabilities, self._engine
        frames = [frame.engine_frame(engine.frame) for _, frame in taken]
        found: list[list[Detection]] = [[] for _ in taken]
        if 'detect' in capabilities:
            start = time.perf_counter()
            try:
                found = engine.detect_many(frames, threshold=self._threshold or None)
            except OutOfMemory as error:  # skip the frames; the engine trimmed its caches
                for camera, _ in taken:
                    self._count_out_of_memory(error, camera.stats)
                return
            for camera, _ in taken:  # the batch's time: what each camera's frame waited for
                camera.stats.record_latency('detect', time.perf_counter() - start)
        for (camera, frame), engine_frame, detections in zip(taken, frames, found):
            try:
                self._publish_stream(camera, frame, engine_frame, detections, capabilities)
            except OutOfMemory as error:  # skip the rest of the frame, not the other cameras
                self._count_out_of_memory(error, camera.stats)

    def _publish_stream(self, camera: CameraStream, frame: SourceFrame, engine_frame: Frame,
                        detections: list[Detection], capabilities: tuple[str, ...]) -> None:
        """Mask and place a camera's detections, publish them and, when due, its scene."""
        engine, stats = self._engine, camera.stats
        if 'segment' in capabilities and detections:  # masks first: depth uses them
            detections = self._timed('segment', engine.segment, engine_frame, detections,
                                     stats=stats)
        if self._use_depth:
            detections, unplaced = camera.placed(frame, detections, self._depth)
            if unplaced:
                stats.record_drop('depth unpaired')
        detections_msg = conversions.detections_to_msg(detections, frame.header)
        camera.detections_pub.publish(detections_msg)
        if camera.detections_2d_pub is not None:
            camera.detections_2d_pub.publish(conversions.detections_2d(detections_msg))
        if self._use_depth:
            self._publish_3d(camera, detections_msg)
        if camera.scene_due.due():
            camera.scene_due.mark()
            tags = (self._timed('tags', engine.tags, engine_frame, stats=stats)
                    if 'tags' in capabilities else [])
            camera.caption = (self._timed('caption', engine.caption, engine_frame, stats=stats)
                              if 'caption' in capabilities else '')
            scene = SceneDescription(caption=camera.caption, tags=tags, detections=detections)
            scene.summary = summarize(scene.caption, tags,
                                      detections if 'detect' in capabilities else None,
                                      frame.size[1])
            camera.scene_pub.publish(conversions.scene_to_msg(scene, frame.header))
            camera.scene_text_pub.publish(String(data=scene.summary))
            camera.markers_pub.publish(conversions.summary_marker(scene.summary, frame.header))
            with self._guarded('memory', stats):
                self._remember(camera, frame, engine_frame, scene)
        if camera.annotated_pub.get_subscription_count() > 0:
            camera.annotated_pub.publish(conversions.rgb_to_image(
                annotate(engine_frame.image, detections, camera.caption), frame.header))
        stats.record_processed()

    def _publish_3d(self, camera: CameraStream, detections: msg.DetectionArray) -> None:
        """Publish markers and detections_3d of the placed detections, in target_frame."""
        lifetime = camera.marker_lifetime()
        try:
            frame_id, transform = self._target(detections.header)
        except LocateFailure as error:
            if self._warnings.allow('tf'):
                self.get_logger().warning(f'no 3D markers or detections_3d: {error}')
            return
        if transform is not conversions.IDENTITY:
            detections = conversions.in_frame(detections, frame_id, transform)
        camera.markers_pub.publish(conversions.detection_markers(detections, lifetime, transform))
        if camera.detections_3d_pub is not None:
            camera.detections_3d_pub.publish(conversions.detections_3d(detections, transform))

    # --- questions, queries, labels -----------------------------------------------------------

    def _on_question(self, question: msg.Question) -> None:
        """Queue a Question for the question thread; answer busy at once when the queue is full."""
        with self._guarded('question'):
            try:
                self._questions.put_nowait(question)
            except queue.Full:
                self._reject('busy', f'{self._questions.maxsize} questions pending')
                self._publish_answer(conversions.answer_to_msg(
                    question.id, question.question, None,
                    error=f'busy: {self._questions.maxsize} questions pending '
                          '(max_pending_questions); ask again later'))

    def _answer_questions(self) -> None:
        """Publish one Answer per queued Question: the answer, or success false with why."""
        ending = False
        while not ending and not self._stopping.is_set():
            questions = [self._questions.get()]
            while len(questions) < QUESTION_BATCH and not self._questions.empty():
                questions.append(self._questions.get_nowait())  # this thread alone takes
            ending = None in questions  # the signal to end, after those queued before it
            questions = [question for question in questions if question is not None]
            if not questions or self._stopping.is_set():
                return
            replies = None
            with self._guarded('question'):
                replies = self._answer_all(questions)
            if replies is None:  # an unexpected failure, logged and counted by _guarded
                replies = [conversions.answer_to_msg(question.id, question.question, None,
                                                     error='internal error (see the node log)')
                           for question in questions]
            for reply in replies:
                self._publish_answer(reply)

    def _answer_all(self, questions: list[msg.Question]) -> list[msg.Answer]:
        """Answer questions, in order; those on one camera together (one engine call)."""
        by_camera: dict[str, list[int]] = {}
        for index, question in enumerate(questions):
            by_camera.setdefault(question.camera, []).append(index)
        replies: dict[int, msg.Answer] = {}
        for camera, indices in by_camera.items():
            together = (self._answer_together(camera, [questions[index] for index in indices])
                        if len(indices) > 1 else None)
            for index, reply in zip(indices, together or [None] * len(indices)):
                replies[index] = reply or self._answer(questions[index])
        return [replies[index] for index in range(len(questions))]

    def _answer_together(self, camera: str,
                         questions: list[msg.Question]) -> Optional[list[msg.Answer]]:
        """
        Answer questions on a camera's newest frame in one engine call (BLIP: one batch).

        None when that fails (a bad question, no frame, out of memory, inactive): each is then
        answered alone, so that each gets its own answer or reason.
        """
        try:
            engine = self._active_engine()
            source = self._camera_for(camera)
            frame, _ = self._frame_for(source, self._max_image_age)
            answers = self._timed('vqa', engine.answer_many, frame.engine_frame(engine.frame),
                                  [question.question for question in questions])
        except (InputError, OutOfMemory, FrameUnavailable, ModelLoadError, NotActive):
            return None
        return [conversions.answer_to_msg(question.id, question.question, frame.header, answer,
                                          camera=source.name)
                for question, answer in zip(questions, answers, strict=True)]

    def _publish_answer(self, reply: msg.Answer) -> None:
        with self._guarded('answers'):
            self._answers_pub.publish(reply)

    def _answer(self, question: msg.Question) -> msg.Answer:
        header, camera = None, question.camera
        try:
            self._active_engine()  # inactive first: not the question's fault
            text = clean_text(question.question, 'question')
            source = self._camera_for(question.camera)
            camera = source.name
            engine = self._active_engine()
            frame, _ = self._frame_for(source, self._max_image_age)
            header = frame.header
            answer = self._timed('vqa', engine.answer, frame.engine_frame(engine.frame), text)
            return conversions.answer_to_msg(question.id, question.question, header, answer,
                                             camera=camera)
        except InputError as error:
            self._reject('question', error)
            return conversions.answer_to_msg(question.id, question.question, header,
                                             error=str(error), camera=camera)
        except OutOfMemory as error:
            self._count_out_of_memory(error)
            return conversions.answer_to_msg(question.id, question.question, header,
                                             error=str(error), camera=camera)
        except (FrameUnavailable, ModelLoadError, NotActive) as error:
            return conversions.answer_to_msg(question.id, question.question, header,
                                             error=str(error), camera=camera)

    def _serve(self, what: str, answer: Callable[[Any, Any], None], request: Any,
               response: Any) -> Any:
        """Fill response with answer(request, response); failures become success false."""
        response.success, response.message = False, 'internal error (see the node log)'
        with self._guarded(what):
            try:
                self._active_engine()  # inactive first: not the request's fault
                answer(request, response)
            except InputError as error:
                self._reject(what, error)
                response.message = str(error)
            except OutOfMemory as error:
                self._count_out_of_memory(error)
                response.message = str(error)
            except (FrameUnavailable, LocateFailure, ModelLoadError, NotActive) as error:
                response.message = str(error)
        return response

    def _active_engine(self) -> PerceptionEngine:
        """Return the engine while the node is active; NotActive (with the state) if not."""
        engine = self._engine
        if not self._active.is_set() or engine is None:
            raise NotActive(f'inactive (state {self._state})')
        return engine

    def _on_query(self, request: srv.QueryScene.Request,
                  response: srv.QueryScene.Response) -> srv.QueryScene.Response:
        return self._serve('query', self._answer_query, request, response)

    def _answer_query(self, request: srv.QueryScene.Request,
                      response: srv.QueryScene.Response) -> None:
        labels = clean_labels(request.labels) if request.labels else None
        question = clean_text(request.question, 'question') if request.question.strip() else None
        camera = self._camera_for(request.camera)
        engine = self._active_engine()
        frame, age = self._frame_for(camera, request.max_age)
        scene = self._timed('query', engine.describe, frame.engine_frame(engine.frame),
                            labels=labels, question=question, caption=request.caption,
                            tags='tags' in self._capabilities, detect=True,
                            segment='segment' in self._capabilities)
        if self._use_depth:
            scene.detections, _ = camera.placed(frame, scene.detections, self._depth)
            scene.summary = summarize(scene.caption, scene.tags, scene.detections,
                                      frame.size[1], scene.answer)
        response.scene = conversions.scene_to_msg(scene, frame.header)
        if scene.answer is not None:
            response.answer = scene.answer.answer
            response.confidence = float(scene.answer.confidence)
        response.success, response.message = True, f'image {age:.2f} s old'

    def _on_locate(self, request: srv.Locate.Request,
                   response: srv.Locate.Response) -> srv.Locate.Response:
        return self._serve('locate', self._locate, request, response)

    def _locate(self, request: srv.Locate.Request, response: srv.Locate.Response) -> None:
        query = clean_text(request.query, 'query')
        camera = self._camera_for(request.camera)
        engine = self._active_engine()
        frame, age = self._frame_for(camera, request.max_age, with_depth=self._use_depth)
        threshold = self._threshold or engine.detection_threshold
        matches = self._timed('locate', engine.detect, frame.engine_frame(engine.frame),
                              labels=[query], threshold=threshold)
        if not matches:
            raise LocateFailure(f'no match: nothing in the image scores {threshold:g} or more '
                                f'for {query!r}')
        if 'segment' in self._capabilities:
            matches = self._timed('segment', engine.segment, frame.engine_frame(engine.frame),
                                  matches)
        matches, unplaced = camera.placed(frame, matches, self._depth)
        response.matches = [conversions.detection_to_msg(match, frame.header)
                            for match in matches]
        response.detection = response.matches[0]
        if unplaced:
            raise LocateFailure(unplaced)
        best = matches[0]
        if best.position is None:
            raise LocateFailure(f'no depth: no valid depth ({self._depth["min_depth"]:g} to '
                                f'{self._depth["max_depth"]:g} m) under the best match')
        frame_id, transform = self._target(frame.header)
        x, y, z = transform.apply(best.position)
        response.point = PointStamped(header=Header(stamp=frame.header.stamp, frame_id=frame_id),
                                      point=Point(x=x, y=y, z=z))
        response.success, response.message = True, f'image {age:.2f} s old'

    def _on_recall(self, request: srv.Recall.Request,
                   response: srv.Recall.Response) -> srv.Recall.Response:
        return self._serve('recall', self._recall, request, response)

    def _recall(self, request: srv.Recall.Request, response: srv.Recall.Response) -> None:
        query = clean_text(request.query, 'query')
        engine = self._active_engine()
        memory = self._memory
        if memory is None:
            raise NotActive('no scene memory open')
        # embedded once, through tag_templates as the tag labels are; None: labels only
        embedding = self._timed('recall embedding', engine.text_embedding, query)
        try:
            matches = self._timed(
                'recall', memory.recall, query, embedding,
                engine.model_ids['tags'] if embedding is not None else '',
                int(request.max_results), conversions.stamp_ns(request.since),
                conversions.stamp_ns(request.until), request.source, request.thumbnails)
        except MemoryStoreError as error:
            self.stats.record_error('memory')
            response.message = f'scene memory: {error}'
            return
        response.matches = [conversions.memory_match_to_msg(match) for match in matches]
        response.success = True
        response.message = f'{len(matches)} matches in {memory.store.description}'

    def _on_set_labels(self, request: srv.SetLabels.Request,
                       response: srv.SetLabels.Response) -> srv.SetLabels.Response:
        with self._guarded('set_labels'):
            try:
                labels = clean_labels(request.labels)
            except InputError as error:
                self._reject('labels', error)
                response.success, response.message = False, str(error)
            else:  # through the parameter, so that it always shows the vocabulary in force
                result = self.set_parameters([Parameter('labels', Parameter.Type.STRING_ARRAY,
                                                        labels)])[0]
                response.success = result.successful
                response.message = result.reason or f'{len(labels)} labels'
        engine = self._engine
        response.labels = list(engine.labels) if engine is not None else self._value('labels')
        return response

    # --- parameters and diagnostics -----------------------------------------------------------

    def _clean_parameters(self, changes: list[Parameter]) -> list[Parameter]:
        """
        Store labels cleaned (as the engine holds them); bad lists are refused later.

        A deprecated model parameter (classifier_model) sets its new one (tagger_model) instead,
        unless that is set in the same call, and stays empty.
        """
        cleaned = []
        names = {change.name for change in changes}
        for change in changes:
            new = parameters.OLD_MODEL_PARAMETERS.get(change.name)
            if new is not None and change.type_ == Parameter.Type.STRING:
                self._warn_old(change.name, new)
                if new not in names:
                    cleaned.append(Parameter(new, Parameter.Type.STRING, change.value))
                change = Parameter(change.name, Parameter.Type.STRING, '')
            elif change.name == 'labels' and change.type_ == Parameter.Type.STRING_ARRAY:
                try:
                    change = Parameter('labels', Parameter.Type.STRING_ARRAY,
                                       clean_labels(change.value))
                except InputError:
                    pass
            cleaned.append(change)
        return cleaned

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        for change in changes:
            if not change.name:
                return SetParametersResult(successful=False, reason='empty parameter name')
            reason = parameters.check(change.name, change.value)
            if (not reason and change.name == 'labels' and not self._cleans_parameters
                    and list(change.value) != clean_labels(change.value)):
                reason = (f'labels must be clean (stripped, no empty or repeated ones): '
                          f'{clean_labels(change.value)}')
            if change.name == 'target_frame' and not reason:
                reason = _tf_unavailable(change.value)
            if (change.name in parameters.OLD_MODEL_PARAMETERS and change.value
                    and not self._cleans_parameters):  # no pre-set callback to rename it
                reason = (f'{change.name} is deprecated: set '
                          f'{parameters.OLD_MODEL_PARAMETERS[change.name]}')
            if reason:
                self._reject(f'parameter {change.name}', reason)
                return SetParametersResult(successful=False, reason=reason)
        changed = {change.name: change.value for change in changes}
        reason = parameters.check_depth_range(changed.get('min_depth', self._depth['min_depth']),
                                              changed.get('max_depth', self._depth['max_depth']))
        if reason:
            self._reject('parameter min_depth', reason)
            return SetParametersResult(successful=False, reason=reason)
        try:
            wanted = self._models_wanted(changed)
        except InputError as error:
            self._reject('parameter preset', error)
            return SetParametersResult(successful=False, reason=str(error))
        for change in changes:  # labels first: the engine may still refuse them
            if change.name == 'labels' and self._engine is not None:
                try:
                    self._engine.set_labels(change.value)
                except InputError as error:
                    self._reject('parameter labels', error)
                    return SetParametersResult(successful=False, reason=f'labels: {error}')
        for change in changes:
            if change.name == 'capabilities':
                self._capabilities = tuple(change.value)
            elif change.name == 'detection_threshold':
                self._threshold = change.value
            elif change.name == 'scene_period':
                for camera in self._cameras:
                    camera.scene_due.period = change.value
                    camera.starved_text.period = max(change.value, MIN_STARVED_PERIOD_S)
            elif change.name == 'image_timeout':
                for camera in self._cameras:
                    camera.stats.image_timeout = change.value
            elif change.name == 'max_rate':
                self._rate.max_rate = change.value
                self._wakeup.set()  # a stream waiting out the old rate goes on at once
            elif change.name == 'max_image_age':
                self._max_image_age = change.value
            elif change.name in self._depth:
                self._depth[change.name] = change.value
            elif change.name in OPTION_NAMES and self._engine is not None:
                self._engine.set_options(**{change.name: change.value})  # checked above
        if wanted:
            previous = {name: self._value(name) for name in changed
                        if name == 'preset' or name in parameters.MODEL_PARAMETERS}
            swap = threading.Thread(target=self._replace_models, name='models', daemon=True,
                                    args=(self._engine, wanted, previous))
            if hasattr(self, 'add_post_set_parameters_callback'):
                self._swaps.put(swap)  # started once the new values are stored (below)
            else:  # rclpy without post-set callbacks (Humble): a load failing at once may
                swap.start()  # set the parameter back before the change is stored
        return SetParametersResult(successful=True)

    def _start_swaps(self, changes: list[Parameter]) -> None:
        """Start the model swaps of a parameter change, now that its values are stored."""
        while not self._swaps.empty():
            self._swaps.get_nowait().start()

    def _models_wanted(self, changed: dict[str, Any]) -> dict[str, str]:
        """Return the models (by capability) that changed model parameters ask for, if new."""
        engine = self._engine
        if engine is None or not {'preset', *parameters.MODEL_PARAMETERS} & changed.keys():
            return {}  # unconfigured: configure loads what the parameters say
        preset = changed.get('preset', self._value('preset'))
        wanted = {}
        for name, capability in parameters.MODEL_PARAMETERS.items():
            model_id = engine.model_for(capability, preset=preset,
                                        override=changed.get(name, self._value(name)) or None)
            if model_id != engine.model_ids[capability]:
                wanted[capability] = model_id
        return wanted

    def _replace_models(self, engine: PerceptionEngine, wanted: dict[str, str],
                        previous: dict[str, Any]) -> None:
        """
        Load each wanted model beside the one serving and swap it in when ready (own thread).

        On a failure (out of memory included) the models serving stay, and the parameters are
        set back, so that they keep naming the models in use.
        """
        gc.unfreeze()  # the model replaced may be collected; frozen again once all are in
        try:
            self._replace_each(engine, wanted, previous)
        finally:
            freeze_heap()

    def _replace_each(self, engine: PerceptionEngine, wanted: dict[str, str],
                      previous: dict[str, Any]) -> None:
        for capability, model_id in wanted.items():
            old = engine.model_ids[capability]
            self.stats.model_state = f'loading {capability}: {model_id}'
            self.get_logger().info(f'{capability}: loading {model_id} beside {old}')
            try:
                engine.replace_model(capability, model_id, warmup=self._value('warmup'))
            except (ModelLoadError, OutOfMemory, InputError) as error:
                self.stats.model_state = 'ready'
                self.stats.record_error('model load')
                self.set_parameters([Parameter(name, value=value)  # before the log says so
                                     for name, value in previous.items()])
                self.get_logger().error(f'{capability}: keeping {old}, as {model_id} failed: '
                                        f'{error}')
                return
            self.get_logger().info(f'{capability}: now {model_id} (was {old})')
        self.stats.model_state = 'ready'

    def _say_starved(self) -> None:
        """While a camera has no image, say so on its scene_text every scene_period, and log."""
        with self._guarded('diagnostics'):
            for camera in self._cameras:
                starved = camera.stats.starved_for()
                if starved is None or not camera.starved_text.due():
                    continue
                camera.starved_text.mark()
                text = f'no image for {starved:.0f} s'
                camera.scene_text_pub.publish(String(data=text))
                self.get_logger().warning(
                    f'{text} on {self.resolve_topic_name(camera.topic("image"))}',
                    throttle_duration_sec=camera.stats.image_timeout)

    def _warn_unheard_publishers(self) -> None:
        """Warn once of each publisher on a sensor topic whose messages cannot reach the node."""
        for camera in self._cameras:
            for subscription in camera.subscriptions:
                topic, qos = subscription.topic_name, subscription.qos_profile
                message_type = type_name(subscription.msg_type)
                hint = (' (image_reliability:=best_effort hears both)'
                        if qos.reliability == ReliabilityPolicy.RELIABLE else '')
                for info, reason in self._unheard.new(
                        topic, self.get_publishers_info_by_topic(topic), message_type, qos):
                    self.get_logger().warning(
                        f'publisher {info.node_namespace.rstrip("/")}/{info.node_name} on '
                        f'{topic} {reason}: none of its messages reach this node'
                        + (hint if info.topic_type == message_type else ''))  # a QoS reason

    def _publish_diagnostics(self) -> None:
        """Publish the node's status and, with several cameras, one per camera."""
        with self._guarded('diagnostics'):
            self._warn_unheard_publishers()
            name = self.get_fully_qualified_name()
            report = self.stats.report()
            report.values.update(self._memory_values())
            reports = [(f'{name}: perception', report)]
            reports += [(f'{name}: camera {camera.name}', camera.stats.report())
                        for camera in self._cameras if camera.name]
            self._diagnostics_pub.publish(conversions.diagnostic_statuses(
                reports, self.get_clock().now().to_msg(), self.stats.device or 'unknown'))


def _tf_unavailable(target_frame: str) -> Optional[str]:
    """Return why target_frame cannot be used here (no tf2_ros), or None."""
    if target_frame and tf2_ros is None:
        return (f'target_frame {target_frame!r} needs tf2_ros, which is not installed: leave it '
                'empty for positions in the camera frame')
    return None


def _declared_default(spec: parameters.ParameterSpec) -> Any:
    """Return the declare_parameter default: the value, or the bare type when unset or []."""
    if spec.default is None or spec.default == []:  # rclpy would type [] as a byte array
        return Parameter.Type.STRING_ARRAY
    return list(spec.default) if isinstance(spec.default, list) else spec.default


def main(args: Optional[list[str]] = None) -> int:
    """Run the perception node until Ctrl-C; 1 when models or parameters are unusable."""
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = PerceptionNode()
        node.start_threads()
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                if not rclpy.ok():  # Ctrl-C as configuring ended: a stop, not a failure
                    raise ExternalShutdownException()
                raise node.configure_error or ModelLoadError('configure failed')
            node.trigger_activate()
        else:
            node.get_logger().info('unconfigured (autostart false): waiting for a lifecycle '
                                   'manager to configure and activate')
        executor = MultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ModelLoadError, OutOfMemory) as error:  # the message names the model and the fix
        rclpy.logging.get_logger(NODE_NAME).fatal(str(error))
        status = 1
    except (InputError, ParameterException) as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(
            f'{error} (fix the parameter; descriptions and defaults: config/params.yaml)')
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == '__main__':
    sys.exit(main())
