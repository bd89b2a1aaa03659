"""
``vlm-perception bag`` and ``bag-shapes``: offline runs over rosbag2 recordings, no ROS needed.

Examples::

    vlm-perception bag-shapes shapes_bag --frames 100 --storage mcap
    vlm-perception bag shapes_bag --out shapes_seen --preset shapes
    vlm-perception bag drive/ --out drive_seen --image-topic /camera/color/image_raw
        --depth-topic /camera/aligned_depth_to_color/image_raw --capabilities detect tags

A progress bar with its ETA goes to stderr; the result (frames, time, throughput, messages
written) to stdout, as JSON with --json. Ctrl-C stops after the frame in progress: the output
is a valid recording of the frames done, and the exit status is 130.
"""

import argparse
import json
from pathlib import Path
import signal
import sys
from types import FrameType
from typing import Any, Optional

from vlm_perception.bag.settings import BagSettings, DEFAULT_BAG_CAPABILITIES, NODE
from vlm_perception.bag.shapes import ShapesRecording
from vlm_perception.core.errors import InputError

PROG = 'vlm-perception'
INTERRUPTED = 130  # as a shell reports a process ended by SIGINT
STORAGES = ('mcap', 'sqlite3')


def _needs_rosbags() -> None:
    """Raise InputError naming the fix when rosbags is not installed."""
    import importlib.util

    if importlib.util.find_spec('rosbags') is None:
        raise InputError('bag runs need the rosbags library: pip install rosbags '
                         '(see requirements.txt for the version)')


def _notice(text: str) -> None:
    """Print a one-line note on stderr, above the progress bar."""
    from tqdm import tqdm

    tqdm.write(f'{PROG}: note: {text}', file=sys.stderr)


class _StopRequest:
    """A SIGINT handler: the first Ctrl-C asks the run to stop after its frame, the next ends."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> '_StopRequest':
        """Handle SIGINT until the block ends."""
        self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Put the former SIGINT handler back."""
        signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        """Whether a stop was asked for."""
        return self.requested

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f'\n{PROG}: stopping after the frame in progress (Ctrl-C again to stop at once)',
              file=sys.stderr, flush=True)


class _ProgressBar:
    """``progress(done, total)`` as a tqdm bar with its ETA on stderr, from its first call."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        """Show done of total frames."""
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit='frame', desc=self.name, disable=self.quiet,
                             file=sys.stderr, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal)."""
        if self._bar is not None:
            self._bar.close()


def _format(report: Any) -> str:
    """Return the report as text: one line, and one each for skipped frames and the memory."""
    outputs = ', '.join(f'{topic} {report.written[topic]}' for topic in report.outputs)
    copied = len(report.written) - len(report.outputs)
    lines = [f"{'interrupted: ' if report.interrupted else ''}{report.frames} of {report.total} "
             f'frames in {report.seconds:.1f} s ({report.rate:.2f} frames/s) -> '
             f'{report.output} ({report.storage}): {outputs} and {copied} input '
             f'topic{"s" * (copied != 1)}']
    if report.skipped or report.unplaced:
        lines.append(f'skipped {report.skipped} frames; {report.unplaced} without depth or '
                     'camera_info for their placement')
    if report.memory is not None:
        memory = report.memory
        lines.append(f"scene memory: {memory['kept']} of {memory['offered']} scenes kept, "
                     f"{memory['written']} written, {memory['dropped'] + memory['failed']} lost")
    return '\n'.join(lines)


def _capabilities(values: list[str]) -> tuple[str, ...]:
    """Return the capabilities of --capabilities (spaces or commas between them)."""
    return tuple(item for value in values for item in value.split(',') if item.strip())


def run_bag_command(args: argparse.Namespace) -> int:
    """Run ``vlm-perception bag``; return the exit status (130 when stopped by Ctrl-C)."""
    _needs_rosbags()
    from vlm_perception.bag.run import run_bag
    from vlm_perception.cli import make_engine

    settings = BagSettings(
        image_topic=args.image_topic, depth_topic=args.depth_topic,
        camera_info_topic=args.camera_info_topic, out_namespace=args.out_namespace,
        storage=args.storage, capabilities=_capabilities(args.capabilities),
        scene_period=args.scene_period, depth_scale=args.depth_scale,
        min_depth=args.min_depth, max_depth=args.max_depth, depth_slop=args.depth_slop,
        memory=args.memory, memory_period=args.memory_period,
        memory_change=args.memory_change)
    progress = _ProgressBar(Path(args.input).name, args.quiet)
    try:
        with _StopRequest() as stop:  # a Ctrl-C while the models load stops before frame 1
            report = run_bag(args.input, args.out, make_engine(args), settings, progress,
                             stop, _notice)
    except KeyboardInterrupt:  # the second Ctrl-C: the output was closed on the way out
        print(f'{PROG}: stopped at once; {args.out} holds what was written', file=sys.stderr)
        return INTERRUPTED
    finally:
        progress.close()
    print(json.dumps(report.to_dict()) if args.json else _format(report), flush=True)
    return INTERRUPTED if report.interrupted else 0


def run_shapes_command(args: argparse.Namespace) -> int:
    """Run ``vlm-perception bag-shapes``; return the exit status."""
    _needs_rosbags()
    from vlm_perception.bag.shapes import record_shapes

    settings = ShapesRecording(frames=args.frames, storage=args.storage, seed=args.seed,
                               rate=args.rate, width=args.width, height=args.height,
                               fov=args.fov, speed=args.speed, frame_id=args.frame_id,
                               namespace=args.namespace)
    progress = _ProgressBar(Path(args.out).name, args.quiet)
    try:
        with _StopRequest() as stop:
            counts = record_shapes(args.out, settings, progress=progress, should_stop=stop)
    finally:
        progress.close()
    frames = min(counts.values(), default=0)
    result = {'output': str(args.out), 'storage': args.storage, 'frames': frames,
              'interrupted': stop.requested, 'written': counts}
    print(json.dumps(result) if args.json else
          f"{'interrupted: ' if stop.requested else ''}wrote {args.out} ({args.storage}): "
          f'{frames} frames of seed {args.seed}: '
          + ', '.join(f'{topic} {count}' for topic, count in counts.items()), flush=True)
    return INTERRUPTED if stop.requested else 0


def _bag_parser(subparsers: argparse._SubParsersAction, parents: list) -> None:
    text = ('run the engine over every image of a rosbag2 recording (MCAP or sqlite3) into a new '
            'one: the input topics plus detections, scene, scene_text (and detections_3d with '
            'depth)')
    parser = subparsers.add_parser('bag', parents=parents, help=text, description=text)
    parser.add_argument('input', metavar='IN', help='bag folder, or a .mcap or .db3 file')
    parser.add_argument('--out', required=True, help='bag folder to write (must not exist)')
    parser.add_argument('--storage', choices=STORAGES,
                        help="storage of the output (default: the input's)")
    topics = parser.add_argument_group('topics')
    topics.add_argument('--image-topic', metavar='TOPIC',
                        help='sensor_msgs/Image or CompressedImage topic (default: the only '
                             'image topic; T also reads T/compressed)')
    topics.add_argument('--depth-topic', metavar='TOPIC',
                        help="registered 16UC1 / 32FC1 depth (default: the image topic's "
                             "sibling 'depth' where recorded; '' for none)")
    topics.add_argument('--camera-info-topic', metavar='TOPIC',
                        help="intrinsics of the image (default: the sibling 'camera_info')")
    topics.add_argument('--out-namespace', metavar='NS',
                        help="namespace of the outputs (default: the image topic's parent)")
    run = parser.add_argument_group('run')
    run.add_argument('--capabilities', nargs='+', default=list(DEFAULT_BAG_CAPABILITIES),
                     metavar='CAP', help='detect, tags, caption, segment (default: '
                                         f"{' '.join(DEFAULT_BAG_CAPABILITIES)}; spaces or "
                                         'commas between them)')
    run.add_argument('--scene-period', type=float, default=NODE['scene_period'],
                     metavar='S', help='seconds of bag time between scenes (caption + tags); '
                                       '0 = every frame (default: %(default)s)')
    for name, meaning in (('depth_scale', 'metres per unit of 16UC1 depth'),
                          ('min_depth', 'nearest valid depth, m'),
                          ('max_depth', 'farthest valid depth, m'),
                          ('depth_slop', 'most seconds between the stamps of an image and its '
                                         'depth image')):
        run.add_argument('--' + name.replace('_', '-'), type=float, default=NODE[name],
                         metavar='X', help=f'{meaning} (default: %(default)s)')
    run.add_argument('--memory', metavar='PATH',
                     help='fill the SQLite scene memory at PATH with the scenes (as the '
                          "node's memory_path; recall with the tag model's embeddings when "
                          'tags run)')
    run.add_argument('--memory-period', type=float, default=NODE['memory_period'],
                     metavar='S', help='bag seconds after which a scene is kept anyway '
                                       '(default: %(default)s)')
    run.add_argument('--memory-change', type=float, default=NODE['memory_change'],
                     metavar='D', help='cosine distance of the tag embedding that keeps a scene '
                                       '(default: %(default)s)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.set_defaults(run=run_bag_command, formatter=None)


def _shapes_parser(subparsers: argparse._SubParsersAction) -> None:
    text = ('record a seeded shapes-world bag (image, depth, camera_info, ground_truth) as '
            'shapes_camera publishes them, to try `bag` without a camera')
    parser = subparsers.add_parser('bag-shapes', help=text, description=text)
    parser.add_argument('out', metavar='OUT', help='bag folder to write (must not exist)')
    parser.add_argument('--storage', choices=STORAGES, default=ShapesRecording.storage,
                        help='storage (default: %(default)s)')
    for name, kind, meaning in (('frames', int, 'frames'), ('seed', int, 'scene seed'),
                                ('rate', float, 'frames per second'),
                                ('width', int, 'pixels'), ('height', int, 'pixels'),
                                ('fov', float, 'horizontal field of view, degrees'),
                                ('speed', float, 'drift of the objects, pixels per second'),
                                ('frame_id', str, 'frame_id of the headers'),
                                ('namespace', str, "namespace of the topics ('' = the root, "
                                                   "the node's topics)")):
        parser.add_argument('--' + name.replace('_', '-'), type=kind,
                            default=getattr(ShapesRecording, name),
                            help=f'{meaning} (default: %(default)r)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    parser.set_defaults(run=run_shapes_command, formatter=None)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bag`` and ``bag-shapes`` subcommands."""
    from vlm_perception.cli import engine_options

    _bag_parser(subparsers, [engine_options()])
    _shapes_parser(subparsers)
