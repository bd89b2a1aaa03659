"""
Benchmark: the node's processed rate against the bare engine's, on the same frames (`make bench`).

    python -m vlm_perception.ros.bench [--seconds 20] [--repeats 3] [--rate 30]
        [--case raw-best_effort --case compressed-reliable ...] [--owlvit-b32 [--no-shapes]]

For each case the bench starts the perception node (``python -m vlm_perception.ros.node``, the
current node, as a process of its own) with ``capabilities:=[detect]`` and a camera process that
publishes pre-rendered 640x480 rgb8 shapes frames (DriftingScene, looped) at ``--rate`` Hz,
stamped now, raw on ``image`` or JPEG (quality 90) on ``image/compressed``. It then measures,
interleaved, the engine, then ``--repeats`` times the node and the engine again, so that each
node window lies between two engine windows (the speed of a shared machine drifts by several
per cent from one 20 s window to the next; the engine's figures of a node window are those of
the windows around it):

1. the bare engine (PerceptionEngine, same preset, detector and device, in this process, on a
   worker thread as in the node's executor): ``engine.detect(engine.frame(rgb))`` over the same
   frames (for compressed cases the same JPEG bytes, decoded in the loop), while the
   camera streams and the node is deactivated (lifecycle: models loaded, no subscription), so
   that both measurements share the camera's load and differ only by what the node does;
2. the node, fed by the camera: processed frames per second (``detections`` received here: the
   outputs of the window less one over the time from its first to its last) and the age of each
   processed frame (receive time - header stamp; one clock: same machine).

After a warm-up of ``--warmup`` seconds each measurement lasts ``--seconds``. Rates and ratios
are medians over the windows; ages and their bound are percentiles over the frames of all
windows pooled (a window holds only a few dozen frames of a slow detector). Reported per case:
engine FPS, the camera rate achieved, node FPS, ratio = node FPS / min(engine FPS, camera rate)
(targets: >= 0.8 with the shapes models, >= 0.9 with the OWL-ViT B/32), p50 / p95 age of the
processed frames, the p95 against the bound "one inference + one camera period" (the bare
engine's p95 inference: a frame's age holds its own inference, which varies as much), and the
rate at which the node receives the camera's frames (its /diagnostics). The bench takes no
camera frame itself: taking 0.9 MB frames at 30 Hz here loaded the node's measurement alone
(the engine's cannot spin this process meanwhile) and cost raw OWL-ViT cases up to 0.1 of the
ratio. The soak (vlm_perception.ros.soak) keeps an idle subscriber as a transport reference.

Cases: ``{raw,compressed}-{best_effort,reliable}`` (image_reliability of the node; the camera
publishes reliable, depth 1, which both accept). The default set is
raw-best_effort, raw-reliable, compressed-best_effort with the shapes preset. ``--owlvit-b32``
adds the same cases with a real-size OWL-ViT B/32 (768 px, random weights, built once into
``~/.cache/vlm_perception/bench``) as detector_model, the shapes preset giving the labels; its
detection_threshold (node and engine alike) lets about 10 boxes a frame through, as in the engine
part (a random head's default threshold let hundreds through, and their conversion, publishing
and the subscriber's deserialisation, not the node, then took tens of milliseconds).

Output: a table on stdout and ``<out>/bench.json`` (default log/bench); the processes' logs
under ``<out>/logs``. The node is stopped with SIGINT after each case. On two CPU cores the
default set takes about 9 minutes, each OWL-ViT B/32 case about 3 more (its first build 10 s,
590 MB on disk). The CPU time other processes took meanwhile is reported too ("others"): on a
shared machine figures compare only at a like load.
"""

import argparse
from dataclasses import asdict, dataclass, replace
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from vlm_perception.bench.models import build_owlvit_b32
from vlm_perception.bench.stages import calibrated_threshold
from vlm_perception.core.device import DTYPES

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = '/vlm_bench'
CAMERA_FRAME = 'bench_camera'   # frame_id prefix; the frame's sequence number follows it
READY_TEXT = ']: ready on '
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
QUIET_MIN_S = 1.0      # after the camera pauses: the node is idle once this long without output
QUIET_MAX_S = 120.0
JPEG_QUALITY = 90
WIDTH, HEIGHT = 640, 480
INPUTS = ('raw', 'compressed')
RELIABILITIES = ('best_effort', 'reliable')
DEFAULT_CASES = ('raw-best_effort', 'raw-reliable', 'compressed-best_effort')
TARGET_RATIO = {'shapes': 0.8, 'owlvit-b32': 0.9}
_SEQ = re.compile(rf'^{CAMERA_FRAME}_(\d+)$')


# --- frames --------------------------------------------------------------------------------------

def render_frames(count: int, rate: float, seed: int = 0) -> np.ndarray:
    """Return (count, 480, 640, 3) uint8 RGB shapes frames, consecutive at rate Hz."""
    from vlm_perception.shapes.drift import DriftingScene

    scene = DriftingScene(np.random.default_rng(seed), WIDTH, HEIGHT)
    return np.stack([scene.step(1.0 / rate) for _ in range(count)])


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Return the JPEG bytes of an RGB frame (cv2.imencode, as image_transport's plugin)."""
    import cv2

    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return data.tobytes()


def frame_sequence(frame_id: str) -> Optional[int]:
    """Return the camera's sequence number in a frame_id, None when it is not the bench's."""
    match = _SEQ.match(frame_id)
    return int(match.group(1)) if match else None


# --- the camera process --------------------------------------------------------------------------

def run_camera(argv: Sequence[str]) -> int:
    """
    Publish the frames of a .npy file in a loop at a set rate, stamped now; paused at start.

    SIGUSR1 resumes; SIGUSR2 pauses, writes the stamps of the frames published since the resume
    (or the last SIGHUP) to the --stamps file (JSON) and then prints 'paused <n>' for the n-th
    pause; SIGHUP does the same without pausing and prints 'stamps <n>' for the n-th; SIGINT
    ends, printing a JSON line of counts. The frame_id is CAMERA_FRAME_<n>, n counting the frames
    published, so receivers know what they missed.
    """
    parser = argparse.ArgumentParser(prog='vlm_perception.ros.bench camera')
    parser.add_argument('--frames', required=True)
    parser.add_argument('--rate', type=float, required=True)
    parser.add_argument('--compressed', action='store_true')
    parser.add_argument('--quality', type=int, default=JPEG_QUALITY)
    parser.add_argument('--stamps', required=True)
    options = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CompressedImage, Image

    frames = np.load(options.frames)
    rclpy.init(args=[])
    node = rclpy.create_node('bench_camera', namespace=NAMESPACE)
    if options.compressed:
        messages = [CompressedImage(format='jpeg', data=encode_jpeg(rgb, options.quality))
                    for rgb in frames]
        publisher = node.create_publisher(CompressedImage, 'image/compressed', QoSProfile(depth=1))
    else:
        messages = [Image(height=HEIGHT, width=WIDTH, encoding='rgb8', is_bigendian=0,
                          step=WIDTH * 3, data=rgb.tobytes()) for rgb in frames]
        publisher = node.create_publisher(Image, 'image', QoSProfile(depth=1))
    del frames
    state = {'running': False, 'stop': False, 'report': False}

    def on_signal(number: int, _frame: Any) -> None:
        if number == signal.SIGUSR1:
            state['running'] = True
        elif number == signal.SIGUSR2:
            state['running'] = False
        elif number == signal.SIGHUP:
            state['report'] = True
        else:
            state['stop'] = True

    for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT,
                   signal.SIGTERM):
        signal.signal(number, on_signal)
    period = 1.0 / options.rate
    published = skipped = pauses = reports = 0
    due: Optional[float] = None
    stamps: list[int] = []
    stamps_file = Path(options.stamps)

    def write_stamps(event: dict[str, int]) -> None:
        partial = stamps_file.with_name(stamps_file.name + '.partial')
        partial.write_text(json.dumps({**event, 'last_seq': published - 1, 'skipped': skipped,
                                       'stamps': stamps}))
        partial.replace(stamps_file)

    print('camera ready', flush=True)
    while not state['stop']:
        if state['report']:
            state['report'] = False
            reports += 1
            write_stamps({'report': reports})
            print(f'stamps {reports}', flush=True)
            stamps = []
        if not state['running']:
            if due is not None:  # just paused
                pauses += 1
                write_stamps({'pause': pauses})
                print(f'paused {pauses}', flush=True)
                stamps = []
            due = None
            time.sleep(0.005)
            continue
        now = time.monotonic()
        if due is None:
            due = now
        if now < due:
            time.sleep(min(due - now, 0.005))
            continue
        message = messages[published % len(messages)]
        stamp = time.time_ns()
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        message.header.frame_id = f'{CAMERA_FRAME}_{published}'
        publisher.publish(message)
        stamps.append(stamp)
        published += 1
        due += period
        if due < now - period:  # more than a period behind: skip frames, as a camera would
            missed = int((now - due) / period)
            skipped += missed
            due += missed * period
    print(json.dumps({'published': published, 'skipped': skipped}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- a random real-size OWL-ViT B/32 -------------------------------------------------------------

# --- cases ---------------------------------------------------------------------------------------

@dataclass
class Case:
    """One configuration of node and camera."""

    model: str            # the preset's name (its own detector) or 'owlvit-b32'
    transport: str        # raw or compressed
    reliability: str      # best_effort or reliable
    preset: str
    detector_model: str = ''
    threshold: Optional[float] = None  # of node and engine alike; None: the detector's own

    @property
    def name(self) -> str:
        """Return the case's name, e.g. shapes/raw-best_effort."""
        return f'{self.model}/{self.transport}-{self.reliability}'

    @property
    def compressed(self) -> bool:
        """Whether the node takes JPEG CompressedImage."""
        return self.transport == 'compressed'

    @property
    def target_ratio(self) -> float:
        """Return the lowest acceptable node FPS / min(engine FPS, camera rate)."""
        return TARGET_RATIO.get(self.model, TARGET_RATIO['shapes'])


def parse_case(text: str) -> tuple[str, str]:
    """Return (input, reliability) of a case name such as raw-best_effort."""
    kind, _, reliability = text.partition('-')
    if kind not in INPUTS or reliability not in RELIABILITIES:
        names = ', '.join(f'{i}-{r}' for i in INPUTS for r in RELIABILITIES)
        raise argparse.ArgumentTypeError(f'unknown case {text!r}: one of {names}')
    return kind, reliability


# --- statistics ----------------------------------------------------------------------------------

def percentile(values: Sequence[float], fraction: float) -> Optional[float]:
    """Return the fraction-quantile of values (linear interpolation), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    """Return the median of the values that are not None, None when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


# --- who used the CPUs ----------------------------------------------------------------------

class CpuMeter:
    """
    CPU time of the bench's processes and of the whole machine over an interval (Linux /proc).

    ``others`` is what the rest of the machine used meanwhile, in cores: on a shared machine the
    figures are only comparable while it stays small.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()
        self._started = time.monotonic()

    @staticmethod
    def _process(pid: int) -> Optional[float]:
        try:
            fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            values = [int(v) for v in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        ticks = os.sysconf('SC_CLK_TCK')
        return {'busy': (sum(values[:8]) - idle) / ticks,
                'processes': {name: self._process(pid) for name, pid in self.pids.items()}}

    def stop(self) -> Optional[dict[str, float]]:
        """Return the cores used (CPU seconds per second) by each process, all and others."""
        end, seconds = self._read(), time.monotonic() - self._started
        if self._start is None or end is None or seconds <= 0:
            return None
        used = {}
        for name in self.pids:
            before, after = self._start['processes'][name], end['processes'][name]
            if before is not None and after is not None:
                used[name] = (after - before) / seconds
        used['all'] = (end['busy'] - self._start['busy']) / seconds
        used['others'] = max(0.0, used['all'] - sum(v for k, v in used.items() if k != 'all'))
        return {key: round(value, 3) for key, value in used.items()}


# --- the bare engine -----------------------------------------------------------------------------

def engine_image(frame: np.ndarray | bytes) -> np.ndarray:
    """Return the RGB image of a frame as the camera sends it: raw as it is, JPEG decoded."""
    from vlm_perception.core.image import decode_compressed

    return decode_compressed(frame) if isinstance(frame, bytes) else frame


def measure_engine(engine: Any, frames: Sequence[np.ndarray | bytes], warmup: float,
                   seconds: float, threshold: Optional[float] = None) -> dict[str, Any]:
    """
    Run engine.detect(engine.frame(image)) over the frames in a loop; rate and time per frame.

    JPEG frames (bytes) are decoded in the loop, as the node decodes each frame it takes.
    """
    index = 0

    def once() -> float:
        nonlocal index
        start = time.perf_counter()
        engine.detect(engine.frame(engine_image(frames[index % len(frames)])),
                      threshold=threshold)
        index += 1
        return time.perf_counter() - start

    end = time.perf_counter() + warmup
    once()
    while time.perf_counter() < end:
        once()
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        times.append(once())
    elapsed = time.perf_counter() - start
    return {'fps': len(times) / elapsed, 'frames': len(times), 'seconds': elapsed,
            'inference_ms_p50': percentile(times, 0.5) * 1e3,
            'inference_ms_p95': percentile(times, 0.95) * 1e3,
            'inference_ms': [round(value * 1e3, 2) for value in times]}


def measure_engine_on(thread: str, engine: Any, frames: Sequence[np.ndarray | bytes],
                      warmup: float, seconds: float,
                      threshold: Optional[float] = None) -> dict[str, Any]:
    """
    Run measure_engine on a thread of its own ('worker', as the node does) or on this one.

    The node infers on an executor thread. On the main thread, torch's OpenMP team spins while
    it waits, and with another process on one of two cores it runs many times slower there
    (OMP_WAIT_POLICY=PASSIVE avoids that): a worker thread compares like with like.
    """
    if thread == 'main':
        return measure_engine(engine, frames, warmup, seconds, threshold)
    import threading

    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome['figures'] = measure_engine(engine, frames, warmup, seconds, threshold)
        except BaseException as error:  # noqa: B902 (re-raised on the calling thread)
            outcome['error'] = error

    worker = threading.Thread(target=work, name='bench engine')
    worker.start()
    worker.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome['figures']


# --- the node and the camera as processes --------------------------------------------------------

class Child:
    """A process of the bench, its output in a log file; stopped with SIGINT."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open('w') as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=ROOT, env=os.environ.copy())

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors='replace')

    def wait_for(self, text: str, timeout: float) -> None:
        """Wait until the process printed text; RuntimeError if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = '\n'.join(self.output().splitlines()[-30:])
                raise RuntimeError(f'{self.process.args[2]} not ready ({text!r} not printed, '
                                   f'status {self.process.returncode}); log {self.log}:\n{tail}')
            time.sleep(0.1)

    def signal(self, number: int) -> None:
        """Send a signal if the process still runs."""
        if self.process.poll() is None:
            self.process.send_signal(number)

    def stop(self) -> dict[str, Any]:
        """Stop with SIGINT (killed after STOP_TIMEOUT_S); exit status, stop time, traceback."""
        start = time.monotonic()
        self.signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return {'status': self.process.returncode, 'stop_s': time.monotonic() - start,
                'traceback': 'Traceback' in self.output()}


def node_command(case: Case, options: argparse.Namespace,
                 capabilities: Sequence[str] = ('detect',)) -> list[str]:
    """
    Return the command line of the perception node for a case (the stream's capabilities).

    Device, dtype and compile come from options (add_node_arguments).
    """
    args = ['-r', f'__ns:={NAMESPACE}', '-p', f'preset:={case.preset}',
            '-p', f'capabilities:=[{",".join(capabilities)}]',
            '-p', f'image_reliability:={case.reliability}',
            '-p', f'compressed:={str(case.compressed).lower()}',
            '-p', f'device:={options.device}', '-p', f'dtype:={options.dtype}',
            '-p', f'compile:={str(options.compile).lower()}']
    if case.detector_model:
        args += ['-p', f'detector_model:={case.detector_model}']
    if case.threshold is not None:
        args += ['-p', f'detection_threshold:={case.threshold!r}']
    return [sys.executable, '-m', 'vlm_perception.ros.node', '--ros-args', *args]


def start_camera(case: Case, rate: float, frames_file: Path, stamps_file: Path,
                 log: Path) -> Child:
    """Start the camera process (run_camera) for a case and wait until it is ready, paused."""
    command = [sys.executable, '-m', 'vlm_perception.ros.bench', 'camera',
               '--frames', str(frames_file), '--rate', str(rate), '--stamps', str(stamps_file)]
    if case.compressed:
        command.append('--compressed')
    camera = Child(command, log)
    camera.wait_for('camera ready', 120.0)
    return camera


def stop_camera(camera: Child) -> dict[str, Any]:
    """Stop the camera; its exit (camera_stop) and the counts it printed (camera_totals)."""
    stopped = camera.stop()
    counts = [line for line in camera.output().splitlines() if line.startswith('{')]
    return {'camera_stop': stopped, 'camera_totals': json.loads(counts[-1]) if counts else None}


# --- what the bench hears ------------------------------------------------------------------------

def _latency_mean(text: str) -> Optional[float]:
    match = re.search(r'mean ([0-9.]+)', text or '')
    return float(match.group(1)) if match else None


class Probe:
    """
    The bench's node: hears the node's detections and /diagnostics, and the camera.

    With listen(idle=True) it takes the camera's frames as an idle subscriber (same topic and QoS
    as the node, nothing done per frame): what arrives there is the reference for what transport
    loses (the soak's).
    """

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from vlm_perception import msg

        self.rclpy = rclpy
        self.node = rclpy.create_node('bench_probe', namespace=NAMESPACE)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.detections: list[tuple[int, int, Optional[int]]] = []   # receive ns, stamp ns, seq
        self.frames: list[tuple[int, Optional[int]]] = []            # receive ns, seq
        self.diagnostics: list[tuple[int, dict[str, str]]] = []      # receive ns, values
        self._image_sub: Any = None
        self._change_state: Any = None
        self.node.create_subscription(msg.DetectionArray, 'detections', self._on_detections, 10)
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_detections(self, message: Any) -> None:
        now = time.time_ns()
        stamp = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        self.detections.append((now, stamp, frame_sequence(message.header.frame_id)))

    def _on_frame(self, message: Any) -> None:
        self.frames.append((time.time_ns(), frame_sequence(message.header.frame_id)))

    def _on_diagnostics(self, message: Any) -> None:
        now = time.time_ns()
        for status in message.status:
            if status.name.startswith(f'{NAMESPACE}/') and status.name.endswith('perception'):
                self.diagnostics.append((now, {kv.key: kv.value for kv in status.values}))

    def listen(self, case: Case, idle: bool = True) -> str:
        """Clear what was heard; subscribe to the camera as the idle reference if idle; topic."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        if self._image_sub is not None:
            self.node.destroy_subscription(self._image_sub)
        self.detections.clear()
        self.frames.clear()
        self.diagnostics.clear()
        reliability = (ReliabilityPolicy.RELIABLE if case.reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        kind, topic = ((CompressedImage, f'{NAMESPACE}/image/compressed') if case.compressed
                       else (Image, f'{NAMESPACE}/image'))
        self._image_sub = (self.node.create_subscription(kind, topic, self._on_frame, qos)
                           if idle else None)
        return topic

    @property
    def listening(self) -> bool:
        """Whether the probe takes the camera's frames as an idle subscriber."""
        return self._image_sub is not None

    def wait_connected(self, topic: str, timeout: float = 30.0) -> None:
        """Wait until the camera, the node and this probe (its idle subscriber) see each other."""
        readers = 1 + self.listening  # the node, and the idle subscriber
        if not self.spin_until(lambda: self.node.count_publishers(topic) >= 1
                               and self.node.count_subscribers(topic) >= readers
                               and self.node.count_publishers(
                                   f'{NAMESPACE}/detections') >= 1, timeout):
            raise RuntimeError(f'the camera, node and bench do not see each other on {topic}')

    def transition(self, name: str) -> None:
        """Deactivate or activate the perception node (lifecycle); RuntimeError if refused."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        if self._change_state is None:
            self._change_state = self.node.create_client(
                ChangeState, f'{NAMESPACE}/vlm_perception/change_state')
        if not self._change_state.wait_for_service(timeout_sec=30.0):
            raise RuntimeError('the perception node has no change_state service')
        request = ChangeState.Request()
        request.transition.id = getattr(Transition, f'TRANSITION_{name.upper()}')
        future = self._change_state.call_async(request)
        self.spin_until(future.done, 30.0)
        if not future.done() or not future.result().success:
            raise RuntimeError(f'the perception node did not {name}')

    def spin_for(self, seconds: float) -> None:
        """Take messages for seconds."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def spin_until(self, done: Any, timeout: float) -> bool:
        """Take messages until done() or timeout; returns done()."""
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return bool(done())

    def destroy(self) -> None:
        """Destroy the node."""
        self.executor.remove_node(self.node)
        self.node.destroy_node()


def window_figures(probe: Probe, start_ns: int, end_ns: int,
                   sent: Sequence[int]) -> dict[str, Any]:
    """
    Return the figures of one node measurement window [start_ns, end_ns).

    From what the probe heard, and the stamps of the frames the camera sent in the window.
    """
    seconds = (end_ns - start_ns) / 1e9
    received = [(now, stamp, seq) for now, stamp, seq in probe.detections
                if start_ns <= now < end_ns]
    ages = [(now - stamp) / 1e6 for now, stamp, _ in received]
    frames = [seq for now, seq in probe.frames if start_ns <= now < end_ns]
    published = len(sent)
    intervals = [(b - a) / 1e6 for a, b in zip(sent, sent[1:])]
    # Between the first and the last output of the window: a count over the window is off by up
    # to one frame, a lot for a model at a frame every few seconds.
    span = (received[-1][0] - received[0][0]) / 1e9 if len(received) >= 3 else 0.0
    result: dict[str, Any] = {
        'seconds': seconds,
        'processed': len(received),
        'fps': (len(received) - 1) / span if span > 0 else len(received) / seconds,
        'fps_count': len(received) / seconds,
        'age_ms_p50': percentile(ages, 0.5),
        'age_ms_p95': percentile(ages, 0.95),
        'age_ms_max': max(ages) if ages else None,
        'ages_ms': [round(age, 2) for age in ages],
        'camera_published': published,
        'camera_hz': published / seconds,
        'camera_interval_ms_p95': percentile(intervals, 0.95),
    }
    if probe.listening:
        result.update({
            'idle_received': len(frames),
            'idle_hz': len(frames) / seconds,
            'idle_lost': published - len(frames),
            'idle_lost_fraction': (published - len(frames)) / published if published else None})
    # the node's own counts: received = processed + superseded between two diagnostics
    inside = [(now, values) for now, values in probe.diagnostics if start_ns <= now < end_ns]
    if len(inside) >= 2:
        (first_ns, first), (last_ns, last) = inside[0], inside[-1]
        superseded = (int(last.get('dropped: superseded', 0))
                      - int(first.get('dropped: superseded', 0)))
        processed = sum(1 for now, _, _ in probe.detections if first_ns < now <= last_ns)
        span = (last_ns - first_ns) / 1e9
        result['node_input_hz'] = (superseded + processed) / span
        result['node_superseded_hz'] = superseded / span
        result['node_detect_ms_mean'] = _latency_mean(last.get('latency detect (ms)', ''))
        result['node_input_hz_reported'] = median(
            [float(values['input rate (Hz)']) for _, values in inside
             if 'input rate (Hz)' in values])
        drops = {key: value for key, value in last.items()
                 if key.startswith(('dropped', 'rejected', 'errors'))}
        result['node_counters_at_end'] = drops
    return result


def measure_node(probe: Probe, camera: Child, warmup: float, seconds: float,
                 pids: dict[str, int], pause: int, stamps_file: Path) -> dict[str, Any]:
    """Resume the camera, warm up, measure one window, pause the camera and wait until idle."""
    camera.signal(signal.SIGUSR1)
    probe.spin_for(warmup)
    start_ns = time.time_ns()
    cpu = CpuMeter(pids)
    probe.spin_for(seconds)
    end_ns = time.time_ns()
    cores = cpu.stop()
    camera.signal(signal.SIGUSR2)
    camera.wait_for(f'paused {pause}\n', 30.0)
    sent = json.loads(stamps_file.read_text())
    figures = window_figures(probe, start_ns, end_ns,
                             [stamp for stamp in sent['stamps'] if start_ns <= stamp < end_ns])
    figures['camera_skipped_total'] = sent['skipped']
    figures['cpu_cores'] = cores
    figures['idle_wait_s'] = wait_idle(probe, sent['last_seq'])
    return figures


def wait_idle(probe: Probe, last_seq: int) -> float:
    """
    Wait until the node finished with the frames it holds (after the camera paused).

    Done when the node published the detections of the last frame the camera sent (last_seq),
    or when nothing came for max(QUIET_MIN_S, 3 typical intervals between its outputs).
    """
    start = time.monotonic()
    stamps = [now for now, _, _ in probe.detections[-20:]]
    gaps = [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:])]
    quiet = min(QUIET_MAX_S, max(QUIET_MIN_S, 3 * (median(gaps) or 0.0)))

    def done() -> bool:
        if not probe.detections:
            return time.monotonic() - start > quiet
        now, _, seq = probe.detections[-1]
        return ((seq is not None and seq >= last_seq)
                or (time.time_ns() - now) / 1e9 > quiet)

    probe.spin_until(done, QUIET_MAX_S)
    probe.spin_for(0.2)
    return time.monotonic() - start


# --- one case ------------------------------------------------------------------------------------

def run_case(case: Case, options: argparse.Namespace, probe: Probe, engine: Any,
             engine_frames: Sequence[np.ndarray | bytes], frames_file: Path) -> dict[str, Any]:
    """Start node and camera, measure engine and node interleaved, stop both."""
    logs = Path(options.out) / 'logs'
    slug = case.name.replace('/', '-')
    started = time.monotonic()
    node = Child(node_command(case, options), logs / f'{slug}-node.log')
    camera: Optional[Child] = None
    result: dict[str, Any] = {'name': case.name, **asdict(case)}
    try:
        node.wait_for(READY_TEXT, READY_TIMEOUT_S)
        result['node_start_s'] = time.monotonic() - started
        stamps_file = frames_file.with_name(f'{slug}-stamps.json')
        camera = start_camera(case, options.rate, frames_file, stamps_file,
                              logs / f'{slug}-camera.log')
        topic = probe.listen(case, idle=False)
        probe.wait_connected(topic)
        pids = {'node': node.process.pid, 'camera': camera.process.pid, 'bench': os.getpid()}
        pauses = 0

        def engine_window() -> dict[str, Any]:
            """Measure the bare engine while the camera streams and the node is deactivated."""
            nonlocal pauses
            probe.transition('deactivate')
            camera.signal(signal.SIGUSR1)  # the camera's load, as while the node is measured
            cpu = CpuMeter(pids)
            figures = measure_engine_on(options.engine_thread, engine, engine_frames,
                                        options.warmup, options.seconds, case.threshold)
            figures['cpu_cores'] = cpu.stop()  # warm-up included
            camera.signal(signal.SIGUSR2)
            pauses += 1
            camera.wait_for(f'paused {pauses}\n', 30.0)
            print(f' engine {figures["fps"]:.2f} FPS', end='', flush=True)
            return figures

        print(f'  {case.name}:', end='', flush=True)
        engines, repeats = [engine_window()], []
        for repeat in range(options.repeats):
            probe.transition('activate')
            probe.wait_connected(topic)  # the node's new subscription
            pauses += 1
            node_figures = measure_node(probe, camera, options.warmup, options.seconds, pids,
                                        pauses, stamps_file)
            print(f'; node {node_figures["fps"]:.2f} FPS (camera '
                  f'{_fmt(node_figures["camera_hz"])} Hz);', end='', flush=True)
            engines.append(engine_window())
            # the engine windows just before and after: a drift of the machine's speed meanwhile
            # weighs on both sides alike
            engine_fps = statistics.fmean(window['fps'] for window in engines[-2:])
            repeats.append({'node': node_figures, 'engine_windows': [repeat, repeat + 1],
                            'engine_fps': engine_fps,
                            'ratio': repeat_ratio(engine_fps, node_figures, options.rate)})
        print(flush=True)
        result['engine_windows'] = engines
        result['repeats'] = repeats
    finally:
        if camera is not None:
            result.update(stop_camera(camera))
        result['node_stop'] = node.stop()
        result['node_log'] = str(node.log)
    result['duration_s'] = time.monotonic() - started
    result.update(summarize(result['engine_windows'], result['repeats'], case.target_ratio,
                            options.rate))
    return result


def repeat_ratio(engine_fps: float, node: dict[str, Any], rate: float) -> Optional[float]:
    """Return one repeat's ratio: node FPS / min(engine FPS, camera rate)."""
    camera_hz = node['camera_hz'] if node.get('camera_hz') else rate
    expected = min(engine_fps, camera_hz)
    return node['fps'] / expected if expected > 0 else None


def summarize(engines: list[dict[str, Any]], repeats: list[dict[str, Any]], target: float,
              rate: float) -> dict[str, Any]:
    """
    Return a case's figures: rates and ratio as medians; ages and bound pooled.

    engines are the engine windows (one before the first node window and one after each),
    repeats the node windows with the ratio each has against the engine windows around it. A
    window holds a few dozen frames of a slow detector, too few for a steady 95th percentile:
    the age p95 is taken over the processed frames of all node windows, the bound over all the
    engine's inferences (+ one camera period).
    """
    def of(windows: list[dict[str, Any]], key: str) -> Optional[float]:
        return median([window.get(key) for window in windows])

    def cores(windows: list[dict[str, Any]], name: str) -> Optional[float]:
        return median([(window.get('cpu_cores') or {}).get(name) for window in windows])

    nodes = [repeat['node'] for repeat in repeats]
    ages = [value for node in nodes for value in node.get('ages_ms', [])]
    inferences = [value for window in engines for value in window.get('inference_ms', [])]
    # p95 against p95: the age holds the frame's own inference, which varies as much
    inference_p95 = percentile(inferences, 0.95)

    ratio = median([repeat['ratio'] for repeat in repeats])
    summary = {
        'engine_fps': of(engines, 'fps'),
        'engine_inference_ms': percentile(inferences, 0.5),
        'camera_hz': of(nodes, 'camera_hz'),
        'node_fps': of(nodes, 'fps'),
        'ratio': ratio,
        'target_ratio': target,
        'meets_target': ratio is not None and ratio >= target,
        'age_p50_ms': percentile(ages, 0.5),
        'age_p95_ms': percentile(ages, 0.95),
        'processed_frames': len(ages),
        'bound_ms': None if inference_p95 is None else inference_p95 + 1e3 / rate,
        'node_input_hz': of(nodes, 'node_input_hz'),
        'node_detect_ms': of(nodes, 'node_detect_ms_mean'),
        'others_cores_engine': cores(engines, 'others'),
        'others_cores_node': cores(nodes, 'others'),
        'node_cores': cores(nodes, 'node'),
    }
    bound, p95 = summary['bound_ms'], summary['age_p95_ms']
    summary['age_within_bound'] = bound is not None and p95 is not None and p95 <= bound
    return summary


# --- output --------------------------------------------------------------------------------------

def _fmt(value: Optional[float], digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


COLUMNS = (('case', 34), ('engine FPS', 10), ('camera Hz', 9), ('node FPS', 8),
           ('ratio', 11), ('age p50/p95 ms', 17), ('bound ms', 8),
           ('node in Hz', 10), ('inf ms eng/node', 15), ('others eng/node', 15))


def aligned(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Return one line of a fixed-width table: the first cell left-aligned, the others right."""
    return '  '.join(f'{cell:>{width}}' if index else f'{cell:<{width}}'
                     for index, (cell, width) in enumerate(zip(cells, widths)))


def table(cases: list[dict[str, Any]]) -> str:
    """Return the results as a fixed-width table."""
    widths = [width for _, width in COLUMNS]
    lines = [aligned([title for title, _ in COLUMNS], widths)]
    for case in cases:
        mark = 'ok' if case['meets_target'] else 'LOW'
        cells = [
            case['name'], _fmt(case['engine_fps'], 2), _fmt(case['camera_hz']),
            _fmt(case['node_fps'], 2), f'{_fmt(case["ratio"], 2)} {mark}',
            f'{_fmt(case["age_p50_ms"], 0)}/{_fmt(case["age_p95_ms"], 0)} '
            + ('ok' if case['age_within_bound'] else 'HIGH'),
            _fmt(case['bound_ms'], 0), _fmt(case['node_input_hz']),
            f'{_fmt(case["engine_inference_ms"], 0)}/{_fmt(case["node_detect_ms"], 0)}',
            f'{_fmt(case["others_cores_engine"], 2)}/{_fmt(case["others_cores_node"], 2)}']
        lines.append(aligned(cells, widths))
    return '\n'.join(lines)


def _file_sha256(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _git(*args: str) -> Optional[str]:
    try:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def meta(options: argparse.Namespace, engine_device: str) -> dict[str, Any]:
    """Return what the figures were measured on: machine, versions, options."""
    import torch

    return {
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'host': platform.node(), 'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'device': engine_device, 'python': platform.python_version(),
        'load_average_at_start': os.getloadavg(),
        'git_commit': _git('rev-parse', 'HEAD'),
        'git_dirty': bool(_git('status', '--porcelain', '--untracked-files=no')),
        'node_py_sha256': _file_sha256(Path(__file__).with_name('node.py')),
        'ros_domain_id': os.environ.get('ROS_DOMAIN_ID'),
        'rmw': os.environ.get('RMW_IMPLEMENTATION', 'default'),
        'environment': {key: value for key, value in os.environ.items()
                        if key.startswith(('FASTDDS_', 'FASTRTPS_', 'CYCLONEDDS_', 'RMW_',
                                           'ROS_', 'OMP_', 'MKL_', 'VLM_PERCEPTION_'))},
        'options': {key: value for key, value in vars(options).items() if key != 'command'},
        'camera': {'width': WIDTH, 'height': HEIGHT, 'encoding': 'rgb8',
                   'jpeg_quality': JPEG_QUALITY, 'qos': 'reliable, keep last 1'},
    }


# --- main ----------------------------------------------------------------------------------------

def add_node_arguments(parser: argparse.ArgumentParser, of: str) -> None:
    """Add the options of camera and node: --rate, --frames, --preset, --device, --dtype..."""
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate, Hz (default 30)')
    parser.add_argument('--frames', type=int, default=60,
                        help='distinct frames pre-rendered and looped (default 60)')
    parser.add_argument('--preset', default='shapes',
                        help=f'preset of {of}: name or folder (default shapes)')
    parser.add_argument('--device', default='auto', help=f'device of {of}')
    parser.add_argument('--dtype', default='auto', choices=DTYPES,
                        help=f'dtype of {of} (default auto: fp16 on CUDA, else fp32)')
    parser.add_argument('--compile', action='store_true',
                        help=f'torch.compile the models of {of} (compiled at warm-up)')
    parser.add_argument('--threads', type=int, default=None,
                        help=f'torch CPU threads of {of} (OMP_NUM_THREADS for the '
                             "node); default: torch's own, as the node runs normally")


def set_environment(threads: Optional[int]) -> None:
    """Keep DDS on loopback, in a domain of its own unless one is set; torch threads if given."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if 'ROS_DOMAIN_ID' not in os.environ:
        os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 101))
    if threads is not None:  # before torch starts, here and in the node
        os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(threads)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the bench's command line."""
    parser = argparse.ArgumentParser(
        prog='python -m vlm_perception.ros.bench',
        description='Node processed FPS vs bare-engine FPS on the same frames, interleaved.')
    parser.add_argument('--seconds', type=float, default=20.0,
                        help='length of each measurement (default 20)')
    parser.add_argument('--warmup', type=float, default=3.0,
                        help='warm-up before each measurement (default 3)')
    parser.add_argument('--repeats', type=int, default=3, help='repeats per case (default 3)')
    add_node_arguments(parser, 'node and engine')
    parser.add_argument('--case', action='append', dest='cases', type=parse_case,
                        metavar='INPUT-RELIABILITY',
                        help='raw or compressed, best_effort or reliable, e.g. raw-reliable; '
                             f'repeatable (default: {", ".join(DEFAULT_CASES)})')
    parser.add_argument('--engine-thread', choices=('worker', 'main'), default='worker',
                        help='thread of the bare-engine measurement: a worker thread, as the '
                             "node's executor (default), or the main thread")
    parser.add_argument('--owlvit-b32', action='store_true',
                        help='also run the cases with a random real-size OWL-ViT B/32 detector')
    parser.add_argument('--no-shapes', action='store_true',
                        help="skip the cases with the preset's own detector")
    parser.add_argument('--out', default=str(ROOT / 'log' / 'bench'),
                        help='folder of bench.json and logs (default log/bench)')
    options = parser.parse_args(argv)
    if options.seconds <= 0 or options.warmup < 0 or options.repeats < 1 or options.rate <= 0 \
            or options.frames < 1 or (options.threads is not None and options.threads < 1):
        parser.error('seconds, rate, frames and threads must be positive, repeats at least 1')
    if options.no_shapes and not options.owlvit_b32:
        parser.error('--no-shapes leaves no case without --owlvit-b32')
    options.cases = options.cases or [parse_case(name) for name in DEFAULT_CASES]
    return options


def make_engine(preset: str, detector_model: str, options: argparse.Namespace) -> Any:
    """Return a loaded, warmed-up engine configured as the node will be (node_command)."""
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine

    engine = PerceptionEngine(EngineConfig(preset=preset, detector_model=detector_model or None,
                                           device=options.device, dtype=options.dtype,
                                           compile=options.compile))
    engine.load(capabilities=['detect'], warmup=True)
    return engine


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 when every case ran (whatever its figures), 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['camera']:
        return run_camera(argv[1:])
    options = parse_args(argv)
    set_environment(options.threads)
    started = time.monotonic()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    import rclpy

    from vlm_perception.core.presets import get_preset

    own = options.preset if options.preset in TARGET_RATIO else Path(options.preset).name
    models = ([] if options.no_shapes else [(own, '')])
    if options.owlvit_b32:
        models.append(('owlvit-b32', str(build_owlvit_b32(
            labels=get_preset(options.preset).labels))))
    cases = [Case(model, kind, reliability, options.preset, detector)
             for model, detector in models for kind, reliability in options.cases]
    print(f'rendering {options.frames} frames', flush=True)
    raw = render_frames(options.frames, options.rate)
    jpegs = ([encode_jpeg(rgb) for rgb in raw] if any(case.compressed for case in cases)
             else None)
    rclpy.init(args=None)
    probe = Probe()
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix='vlm_bench_') as scratch:
        frames_file = Path(scratch) / 'frames.npy'
        np.save(frames_file, raw)
        engines: dict[str, Any] = {}
        thresholds: dict[str, Optional[float]] = {}
        info = {}
        try:
            for case in cases:
                if case.detector_model not in engines:
                    engines.clear()  # one model in memory at a time
                    print(f'loading the engine ({case.model})', flush=True)
                    engine = make_engine(case.preset, case.detector_model, options)
                    engines[case.detector_model] = engine
                    # A random head's scores say nothing: the threshold letting about as many
                    # boxes through as the engine part's (calibrated_threshold); the preset's
                    # trained detector keeps its own.
                    thresholds[case.detector_model] = (calibrated_threshold(
                        engine, engine.frame(raw[0]), get_preset(case.preset).labels)
                        if case.detector_model else None)
                engine = engines[case.detector_model]
                case = replace(case, threshold=thresholds[case.detector_model])
                info.setdefault('device', engine.device)
                print(f'case {case.name}', flush=True)
                try:
                    results.append(run_case(case, options, probe, engine,
                                            jpegs if case.compressed else raw, frames_file))
                except RuntimeError as error:
                    print(f'case {case.name} failed: {error}', file=sys.stderr, flush=True)
                    failures.append(f'{case.name}: {error}')
        finally:
            probe.destroy()
            rclpy.try_shutdown()
    report = {'meta': meta(options, info.get('device', options.device)), 'cases': results,
              'failures': failures, 'duration_s': time.monotonic() - started}
    report_file = out / 'bench.json'
    report_file.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(results))
    print('\nratio = node FPS / min(engine FPS, camera Hz), target >= '
          + ', '.join(f'{value:g} ({model})' for model, value in TARGET_RATIO.items())
          + f'; FPS and ratio: median of {options.repeats} node windows of '
          f'{options.seconds:g} s, each between two engine windows; '
          'age (receive - stamp) p95 over the frames of all node windows, within bound = the '
          "engine's inference p95 (all its windows) + one camera period; others = CPU cores used "
          'by other processes of the machine meanwhile (engine/node measurement)')
    print(f'{report_file} ({report["duration_s"]:.0f} s in all)')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
