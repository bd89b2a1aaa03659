"""
Soak benchmark: the node's memory and rates over minutes of streaming and requests (`make soak`).

    python -m vlm_perception.ros.soak [--minutes 10] [--interval 10] [--warmup 60] [--rate 30]
        [--request-period 5] [--compressed] [--reliable] [--preset shapes]
        [--detector-model MODEL | --owlvit-b32] [--capabilities detect] [--device auto]

It starts what ``make bench`` starts (vlm_perception.ros.bench): the perception node (the
current one, ``python -m vlm_perception.ros.node``, a process of its own, with the stream's
``capabilities``, detect by default) and the camera process, which publishes pre-rendered
640x480 rgb8 shapes frames at ``--rate`` Hz, stamped now, raw on ``image`` (JPEG on
``image/compressed`` with ``--compressed``); the node takes them best effort (reliable with
``--reliable``). The camera runs without a pause for ``--minutes``. Beside the stream, every
``--request-period`` seconds a thread of this process sends one ``query`` service call (a
question and a caption) and one Question on ``questions`` (its Answer on ``answers``), each
waiting for its reply (PerceptionClient), from the node's first processed frame on, so that the
request paths are soaked too; their first use loads the vqa and captioner models.

Every ``--interval`` seconds it samples:

- the node process's memory: VmRSS (and VmHWM, threads, open file descriptors) from /proc;
- the node's processed rate over the interval (``detections`` received here: bench's
  window_figures) and the age of the processed frames;
- the rate the camera sent (its stamps over the interval) and the rate an idle subscriber here
  received, as the bench measures them;
- the CPU cores used by node, camera, this process and the rest of the machine (CpuMeter);
- the requests sent and answered so far.

Summary, over the samples at or after ``--warmup`` seconds: the RSS at the first of them, at the
last and the most of all samples, the growth (last - first) and the growth per 10 minutes (the
slope of a least-squares line through them, numpy.polyfit), the median and lowest processed
FPS, the camera's median rate, and per request kind: sent, answered, succeeded, latency p50 and
max; also the RSS before the stream started and the node's peak RSS (VmHWM) at the end.

Output: a table on stdout and ``--out`` (default log/soak/soak.json), the processes' logs in
``logs/`` next to it. Exit status 0 when the soak ran, whatever its figures; 1 when something
broke: the node or the camera exited, no frame was processed, or a request got no reply within
``--request-timeout``.
"""

import argparse
from dataclasses import asdict
import json
import os
from pathlib import Path
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from vlm_perception.ros.bench import (
    _fmt, add_node_arguments, aligned, build_owlvit_b32, Case, Child, CpuMeter, median, meta,
    NAMESPACE, node_command, percentile, Probe, READY_TEXT, READY_TIMEOUT_S, render_frames,
    ROOT, set_environment, start_camera, stop_camera, window_figures)

QUERY = 'how many objects are there?'      # with caption: true
QUESTION = 'what color is the circle?'
REQUEST_KINDS = ('query', 'question')
STAMPS_TIMEOUT_S = 30.0
FIRST_FRAME_TIMEOUT_S = 120.0
_STATUS_FIELDS = {'VmRSS': 'rss_mb', 'VmHWM': 'hwm_mb', 'Threads': 'threads'}


# --- what is sampled ---------------------------------------------------------------------------

def process_status(pid: int) -> dict[str, Any]:
    """Return a process's rss_mb and hwm_mb (VmRSS, VmHWM in MB), threads and fds (Linux /proc)."""
    status: dict[str, Any] = {}
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            key, _, value = line.partition(':')
            if key in _STATUS_FIELDS:
                number = int(value.split()[0])
                status[_STATUS_FIELDS[key]] = number / 1024 if key.startswith('Vm') else number
        status['fds'] = len(os.listdir(f'/proc/{pid}/fd'))
    except (OSError, ValueError, IndexError):
        pass
    return status


class Requester:
    """
    A query and a Question every period seconds, on a thread of its own; counts the replies.

    ``answered`` counts the replies, ``succeeded`` those with success true; a request without a
    reply within timeout seconds is counted sent only, and its error kept in ``errors``.
    """

    def __init__(self, period: float, timeout: float) -> None:
        from vlm_perception.ros.client import PerceptionClient

        self.client = PerceptionClient(namespace=NAMESPACE)
        self.period, self.timeout = period, timeout
        self.counts = {kind: {'sent': 0, 'answered': 0, 'succeeded': 0} for kind in REQUEST_KINDS}
        self.latencies: dict[str, list[float]] = {kind: [] for kind in REQUEST_KINDS}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='soak requests', daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def _run(self) -> None:
        calls: dict[str, Callable[[], Any]] = {
            'query': lambda: self.client.query(QUERY, caption=True, timeout=self.timeout),
            'question': lambda: self.client.ask(QUESTION, timeout=self.timeout)}
        due = time.monotonic()
        try:
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                for kind in REQUEST_KINDS:
                    self._send(kind, calls[kind])
                due = max(due + self.period, time.monotonic())
        except BaseException as error:  # noqa: B902 (reported as a failure by stop())
            self.errors.append(f'request thread: {error!r}')

    def _send(self, kind: str, call: Callable[[], Any]) -> None:
        from vlm_perception.ros.client import PerceptionError, PerceptionTimeout

        counts = self.counts[kind]
        counts['sent'] += 1
        start = time.perf_counter()
        try:
            call()
            counts['succeeded'] += 1
        except PerceptionTimeout as error:
            self.errors.append(f'{kind}: {error}')
            return
        except PerceptionError as error:  # a reply with success false
            if len(self.errors) < 20:
                self.errors.append(f'{kind} answered success false: {error}')
        counts['answered'] += 1
        self.latencies[kind].append(time.perf_counter() - start)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Return the counts so far."""
        return {kind: dict(counts) for kind, counts in self.counts.items()}

    def stop(self) -> Optional[str]:
        """Stop after the request in hand (waits for its reply); a failure's text, or None."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(len(REQUEST_KINDS) * self.timeout + 10.0)
        if self._thread.is_alive():
            return 'the request thread did not stop'
        self.client.destroy()
        unanswered = {kind: counts['sent'] - counts['answered']
                      for kind, counts in self.counts.items()
                      if counts['sent'] > counts['answered']}
        if unanswered:
            return f'requests without a reply within {self.timeout:g} s: {unanswered}'
        return None

    def summary(self) -> dict[str, Any]:
        """Return per kind: sent, answered, succeeded, latency p50 and max (ms); the errors."""
        result: dict[str, Any] = {}
        for kind, counts in self.snapshot().items():
            latencies = [seconds * 1e3 for seconds in self.latencies[kind]]
            result[kind] = {**counts, 'latency_ms_p50': percentile(latencies, 0.5),
                            'latency_ms_max': max(latencies) if latencies else None}
        result['errors'] = self.errors
        return result


# --- the soak ----------------------------------------------------------------------------------

def sample_times(options: argparse.Namespace) -> list[float]:
    """Return the times of the samples, in seconds from the start of the stream."""
    count = int(options.minutes * 60 / options.interval + 1e-9)
    return [index * options.interval for index in range(1, count + 1)]


def soak(case: Case, options: argparse.Namespace, probe: Probe, frames_file: Path,
         logs: Path) -> dict[str, Any]:
    """Start node and camera, stream and request for the soak's minutes, sampling; stop both."""
    started = time.monotonic()
    node = Child(node_command(case, options, options.capabilities), logs / 'node.log')
    camera: Optional[Child] = None
    requester: Optional[Requester] = None
    result: dict[str, Any] = {'case': asdict(case), 'samples': [], 'failures': []}
    try:
        node.wait_for(READY_TEXT, READY_TIMEOUT_S)
        result['node_start_s'] = time.monotonic() - started
        stamps_file = frames_file.with_name('stamps.json')
        camera = start_camera(case, options.rate, frames_file, stamps_file, logs / 'camera.log')
        probe.wait_connected(probe.listen(case))
        result['node_before_stream'] = process_status(node.process.pid)
        requester = Requester(options.request_period, options.request_timeout)
        sample_loop(options, probe, node, camera, stamps_file, requester, result['samples'])
    except RuntimeError as error:
        result['failures'].append(str(error))
    finally:
        if requester is not None:
            failure = requester.stop()
            if failure:
                result['failures'].append(failure)
            result['requests'] = requester.summary()
        if camera is not None:
            result.update(stop_camera(camera))
        result['node_stop'] = node.stop()
        result['node_log'] = str(node.log)
    if result['node_stop']['status'] != 0 or result['node_stop']['traceback']:
        result['failures'].append(f'the node did not stop cleanly: {result["node_stop"]} '
                                  f'(log {node.log})')
    if not any(sample['processed'] for sample in result['samples']):
        result['failures'].append('the node processed no frame')
    return result


def sample_loop(options: argparse.Namespace, probe: Probe, node: Child, camera: Child,
                stamps_file: Path, requester: Requester, samples: list[dict[str, Any]]) -> None:
    """Run camera and requests, appending a sample every interval; RuntimeError when broken."""
    pids = {'node': node.process.pid, 'camera': camera.process.pid, 'soak': os.getpid()}
    times = sample_times(options)
    progress = Progress(len(times))
    camera.signal(signal.SIGUSR1)
    start, start_ns = time.monotonic(), time.time_ns()
    # requests from the first processed frame on: before it, they are answered 'no image'
    if not probe.spin_until(lambda: bool(probe.detections) or node.process.poll() is not None,
                            FIRST_FRAME_TIMEOUT_S) or node.process.poll() is not None:
        raise RuntimeError(f'no frame processed within {FIRST_FRAME_TIMEOUT_S:g} s of the '
                           f'stream (node status {node.process.poll()}, log {node.log})')
    requester.start()
    window_start_ns = start_ns
    try:
        for index, at in enumerate(times, start=1):
            cpu = CpuMeter(pids)
            died = probe.spin_until(lambda: node.process.poll() is not None
                                    or camera.process.poll() is not None,
                                    start + at - time.monotonic())
            if died:
                for child in (node, camera):
                    if child.process.poll() is not None:
                        tail = '\n'.join(child.output().splitlines()[-30:])
                        raise RuntimeError(f'{child.log.stem} exited with status '
                                           f'{child.process.returncode} after {at:g} s or less; '
                                           f'log {child.log}:\n{tail}')
            end_ns = time.time_ns()
            status = process_status(node.process.pid)
            cores = cpu.stop()
            camera.signal(signal.SIGHUP)
            if not probe.spin_until(lambda: f'stamps {index}\n' in camera.output(),
                                    STAMPS_TIMEOUT_S):
                raise RuntimeError(f'the camera did not report its stamps (log {camera.log})')
            sent = json.loads(stamps_file.read_text())['stamps']
            sent = [stamp for stamp in sent if window_start_ns <= stamp < end_ns]
            figures = window_figures(probe, window_start_ns, end_ns, sent)
            device = next((values['device'] for _, values in reversed(probe.diagnostics)
                           if 'device' in values), None)
            samples.append({'t_s': (end_ns - start_ns) / 1e9, **status, **figures,
                            'cpu_cores': cores, 'requests': requester.snapshot(),
                            'device': device})
            progress.update(samples[-1])
            # only what the next window needs, so a soak of hours does not grow this process
            probe.detections[:] = [item for item in probe.detections if item[0] >= end_ns]
            probe.frames[:] = [item for item in probe.frames if item[0] >= end_ns]
            probe.diagnostics[:] = [item for item in probe.diagnostics if item[0] >= end_ns]
            window_start_ns = end_ns
    finally:
        progress.close()


class Progress:
    """A tqdm bar on a terminal (where tqdm is installed), otherwise a line per sample."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stdout.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc='soak', unit='sample', file=sys.stdout)

    def update(self, sample: dict[str, Any]) -> None:
        """Show one sample."""
        answered = sum(counts['answered'] for counts in sample['requests'].values())
        sent = sum(counts['sent'] for counts in sample['requests'].values())
        text = (f'RSS {_fmt(sample.get("rss_mb"))} MB, node {sample["fps"]:.2f} FPS, camera '
                f'{sample["camera_hz"]:.1f} Hz, requests {answered}/{sent}')
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        else:
            print(f'  {sample["t_s"]:6.0f} s: {text}', flush=True)

    def close(self) -> None:
        """End the bar."""
        if self.bar is not None:
            self.bar.close()


# --- figures -----------------------------------------------------------------------------------

def summarize(samples: list[dict[str, Any]], warmup: float,
              requests: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Return the soak's figures over the samples at or after warmup seconds (RSS max: all)."""
    steady = [sample for sample in samples if sample['t_s'] >= warmup and 'rss_mb' in sample]
    rss = [sample['rss_mb'] for sample in steady]
    fps = [sample['fps'] for sample in steady]
    slope = (float(np.polyfit([sample['t_s'] for sample in steady], rss, 1)[0])
             if len(steady) >= 2 else None)
    summary: dict[str, Any] = {
        'warmup_s': warmup,
        'samples': len(samples),
        'samples_after_warmup': len(steady),
        'seconds_after_warmup': steady[-1]['t_s'] - steady[0]['t_s'] if steady else None,
        'rss_first_mb': rss[0] if rss else None,
        'rss_last_mb': rss[-1] if rss else None,
        'rss_max_mb': max((sample['rss_mb'] for sample in samples if 'rss_mb' in sample),
                          default=None),
        'rss_growth_mb': rss[-1] - rss[0] if rss else None,
        'rss_growth_per_10min_mb': slope * 600 if slope is not None else None,
        'hwm_last_mb': samples[-1].get('hwm_mb') if samples else None,
        'threads_first': steady[0].get('threads') if steady else None,
        'threads_last': steady[-1].get('threads') if steady else None,
        'fds_first': steady[0].get('fds') if steady else None,
        'fds_last': steady[-1].get('fds') if steady else None,
        'node_fps_median': median(fps),
        'node_fps_min': min(fps) if fps else None,
        'camera_hz_median': median([sample['camera_hz'] for sample in steady]),
        'idle_hz_median': median([sample['idle_hz'] for sample in steady]),
        'age_p95_ms_median': median([sample['age_ms_p95'] for sample in steady]),
        'node_cores_median': median([(sample['cpu_cores'] or {}).get('node')
                                     for sample in steady]),
        'others_cores_median': median([(sample['cpu_cores'] or {}).get('others')
                                       for sample in steady]),
        'node_counters_at_end': samples[-1].get('node_counters_at_end') if samples else None,
    }
    for kind in REQUEST_KINDS:
        figures = (requests or {}).get(kind, {})
        summary[f'{kind}_sent'] = figures.get('sent', 0)
        summary[f'{kind}_answered'] = figures.get('answered', 0)
        summary[f'{kind}_succeeded'] = figures.get('succeeded', 0)
        summary[f'{kind}_latency_ms_p50'] = figures.get('latency_ms_p50')
        summary[f'{kind}_latency_ms_max'] = figures.get('latency_ms_max')
    return summary


COLUMNS = (('t s', 6), ('RSS MB', 8), ('threads', 7), ('fds', 5), ('node FPS', 8),
           ('camera Hz', 9), ('idle Hz', 7), ('age p50/p95 ms', 15), ('cores node/others', 17),
           ('answered/sent', 13))


def table(samples: list[dict[str, Any]]) -> str:
    """Return the samples as a fixed-width table."""
    widths = [width for _, width in COLUMNS]
    lines = [aligned([title for title, _ in COLUMNS], widths)]
    for sample in samples:
        cores = sample['cpu_cores'] or {}
        requests = sample['requests'].values()
        cells = [f'{sample["t_s"]:.0f}', _fmt(sample.get('rss_mb')),
                 str(sample.get('threads', '-')), str(sample.get('fds', '-')),
                 _fmt(sample['fps'], 2), _fmt(sample['camera_hz']), _fmt(sample['idle_hz']),
                 f'{_fmt(sample["age_ms_p50"], 0)}/{_fmt(sample["age_ms_p95"], 0)}',
                 f'{_fmt(cores.get("node"), 2)}/{_fmt(cores.get("others"), 2)}',
                 f'{sum(c["answered"] for c in requests)}/{sum(c["sent"] for c in requests)}']
        lines.append(aligned(cells, widths))
    return '\n'.join(lines)


def summary_text(summary: dict[str, Any]) -> str:
    """Return the summary as a few lines."""
    def of(kind: str) -> str:
        answered, sent, succeeded, p50, most = (
            summary[f'{kind}_{key}'] for key in ('answered', 'sent', 'succeeded',
                                                 'latency_ms_p50', 'latency_ms_max'))
        return (f'{kind} {answered}/{sent} answered ({succeeded} succeeded, latency p50 '
                f'{_fmt(p50, 0)} ms, max {_fmt(most, 0)} ms)')

    requests = ', '.join(of(kind) for kind in REQUEST_KINDS)
    return '\n'.join([
        f'after the {summary["warmup_s"]:g} s warm-up ({summary["samples_after_warmup"]} samples '
        f'over {_fmt(summary["seconds_after_warmup"], 0)} s): RSS {_fmt(summary["rss_first_mb"])}'
        f' -> {_fmt(summary["rss_last_mb"])} MB (max {_fmt(summary["rss_max_mb"])}), growth '
        f'{_fmt(summary["rss_growth_mb"])} MB, fit {_fmt(summary["rss_growth_per_10min_mb"])} '
        f'MB per 10 min; before the stream {_fmt(summary.get("rss_before_stream_mb"))} MB, peak '
        f'(VmHWM) {_fmt(summary["hwm_last_mb"])} MB',
        f'node FPS median {_fmt(summary["node_fps_median"], 2)}, min '
        f'{_fmt(summary["node_fps_min"], 2)}; camera {_fmt(summary["camera_hz_median"])} Hz, idle '
        f'subscriber {_fmt(summary["idle_hz_median"])} Hz; threads {summary["threads_first"]} -> '
        f'{summary["threads_last"]}, fds {summary["fds_first"]} -> {summary["fds_last"]}',
        f'requests: {requests}'])


# --- main --------------------------------------------------------------------------------------

def _capabilities(text: str) -> list[str]:
    return [part.strip() for part in text.split(',') if part.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the soak's command line."""
    parser = argparse.ArgumentParser(
        prog='python -m vlm_perception.ros.soak',
        description="The node's RSS and processed rate over minutes of streaming and requests.")
    parser.add_argument('--minutes', type=float, default=10.0,
                        help='length of the soak (default 10)')
    parser.add_argument('--interval', type=float, default=10.0,
                        help='seconds between samples (default 10)')
    parser.add_argument('--warmup', type=float, default=60.0,
                        help='seconds of stream before the samples the summary uses (default 60)')
    parser.add_argument('--request-period', type=float, default=5.0,
                        help='seconds between two rounds of a query and a Question (default 5)')
    parser.add_argument('--request-timeout', type=float, default=60.0,
                        help='seconds a request may wait for its reply (default 60)')
    add_node_arguments(parser, 'the node')
    parser.add_argument('--compressed', action='store_true',
                        help='JPEG frames on image/compressed instead of raw on image')
    parser.add_argument('--reliable', action='store_true',
                        help="the node's image_reliability reliable (default best_effort)")
    parser.add_argument('--capabilities', type=_capabilities, default=['detect'],
                        help="the stream's capabilities, comma-separated (default detect)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument('--detector-model', default='',
                        help="the node's detector_model (default: the preset's detector)")
    models.add_argument('--owlvit-b32', action='store_true',
                        help="a random real-size OWL-ViT B/32 as detector_model (bench's)")
    parser.add_argument('--out', default=str(ROOT / 'log' / 'soak' / 'soak.json'),
                        help='the JSON report; logs go to logs/ beside it '
                             '(default log/soak/soak.json)')
    options = parser.parse_args(argv)
    if min(options.minutes, options.interval, options.request_period, options.request_timeout,
           options.rate, options.frames) <= 0 or options.warmup < 0 \
            or (options.threads is not None and options.threads < 1):
        parser.error('minutes, interval, request period and timeout, rate, frames and threads '
                     'must be positive, warmup not negative')
    if sum(at >= options.warmup for at in sample_times(options)) < 2:
        parser.error('--minutes must leave at least two samples (one per --interval) after '
                     '--warmup')
    return options


def make_case(options: argparse.Namespace) -> Case:
    """Return the soak's node and camera configuration (building the OWL-ViT B/32 if asked)."""
    from vlm_perception.core.presets import get_preset

    if options.owlvit_b32:
        model = 'owlvit-b32'
        options.detector_model = str(build_owlvit_b32(labels=get_preset(options.preset).labels))
    else:
        model = Path(options.detector_model or options.preset).name
    return Case(model, 'compressed' if options.compressed else 'raw',
                'reliable' if options.reliable else 'best_effort', options.preset,
                options.detector_model)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the soak; 0 when it ran (whatever its figures), 1 when something broke."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    set_environment(options.threads)
    started = time.monotonic()
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    import rclpy

    case = make_case(options)
    info = meta(options, options.device)
    print(f'soak of {case.name}: {options.minutes:g} min, a sample every {options.interval:g} s, '
          f'camera {options.rate:g} Hz, a query and a question every '
          f'{options.request_period:g} s', flush=True)
    rclpy.init(args=None)
    probe = Probe()
    with tempfile.TemporaryDirectory(prefix='vlm_soak_') as scratch:
        frames_file = Path(scratch) / 'frames.npy'
        np.save(frames_file, render_frames(options.frames, options.rate))
        try:
            result = soak(case, options, probe, frames_file, out.parent / 'logs')
        finally:
            probe.destroy()
            rclpy.try_shutdown()
    result['summary'] = summarize(result['samples'], options.warmup, result.get('requests'))
    result['summary']['rss_before_stream_mb'] = result.get('node_before_stream', {}).get('rss_mb')
    info['device'] = next((sample['device'] for sample in reversed(result['samples'])
                           if sample.get('device')), options.device)  # as the node reported it
    report = {'meta': info, **result, 'duration_s': time.monotonic() - started}
    out.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(result['samples']))
    print()
    print(summary_text(result['summary']))
    for failure in result['failures']:
        print(f'FAILED: {failure}', file=sys.stderr)
    print(f'{out} ({report["duration_s"]:.0f} s in all)')
    return 1 if result['failures'] else 0


if __name__ == '__main__':
    sys.exit(main())
