"""
``vlm-perception eval``: score a preset on freshly rendered shapes-world scenes.

Everything goes through the perception engine, the path users take::

    vlm-perception eval --preset shapes --scenes 200 --seed 12345

Per scene: one detection call with all 12 names (recall at IoU >= 0.5 of present objects,
false detections per absent name, extra detections per image: boxes of present names left
over when each detection, best score first, takes an unmatched object of its name at
IoU >= 0.5), one with the three shapes, the top tag among the 12 names,
every ground-truth question, and the caption. Prints a table of metrics against their bars,
then the same as one JSON line.
"""

import argparse
import json
import sys
import time
from typing import Any, Sequence

import numpy as np

from vlm_perception.shapes import world

DEFAULT_SIZES = '640x480,800x450,1024x576,480x640'
IOU_MATCH = 0.5

# metric -> (bar, 'min' or 'max')
BARS: dict[str, tuple[float, str]] = {
    'detection_recall': (0.9, 'min'),
    'false_detections_per_absent_query': (0.1, 'max'),
    'top_tag_present': (0.9, 'min'),
    'vqa_overall': (0.85, 'min'),
    'vqa_colour': (0.9, 'min'),
    'vqa_shape': (0.9, 'min'),
    'vqa_yes_no': (0.9, 'min'),
    'vqa_count': (0.75, 'min'),
    'caption_names_1_2_objects': (0.8, 'min'),
}


def question_kind(question: str) -> str:
    """Return the kind of a shapes-world question: colour, shape, count or yes_no."""
    if question.startswith('what color'):
        return 'colour'
    if question.startswith('what shape'):
        return 'shape'
    if question.startswith('how many'):
        return 'count'
    return 'yes_no'


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse 'WxH,WxH,...' into (width, height) pairs."""
    sizes = []
    for item in text.split(','):
        width, _, height = item.strip().lower().partition('x')
        try:
            sizes.append((int(width), int(height)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size '{item}': expected WIDTHxHEIGHT") from None
        if min(sizes[-1]) < 2 * world.MAX_SIZE:
            raise argparse.ArgumentTypeError(
                f"size '{item}' is too small: both sides must be at least {2 * world.MAX_SIZE}")
    return sizes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Return the intersection over union of two (x0, y0, x1, y1) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_box(detection: Any) -> tuple[float, float, float, float]:
    """Return a Detection's box as (x0, y0, x1, y1) pixels."""
    half_w, half_h = detection.size_x / 2, detection.size_y / 2
    return (detection.center_x - half_w, detection.center_y - half_h,
            detection.center_x + half_w, detection.center_y + half_h)


def found(obj: world.ShapeObject, detections: Sequence[Any], label: str) -> bool:
    """Tell whether a detection labelled ``label`` overlaps the object at IoU >= 0.5."""
    return any(d.label == label and box_iou(detection_box(d), obj.box) >= IOU_MATCH
               for d in detections)


def extra_detections(objects: Sequence[world.ShapeObject], detections: Sequence[Any]) -> int:
    """
    Count the detections of present names that match no object.

    Best score first, each detection takes the unmatched object of its name that it overlaps
    most at IoU >= 0.5; what is left over of a present name is an extra (a shifted second box,
    a wrong-name box on another object). Detections of absent names are not counted here.
    """
    unmatched = list(objects)
    present = {obj.name for obj in objects}
    extra = 0
    for detection in sorted(detections, key=lambda d: d.score, reverse=True):
        if detection.label not in present:
            continue
        box = detection_box(detection)
        overlaps = [(box_iou(box, obj.box), k) for k, obj in enumerate(unmatched)
                    if obj.name == detection.label]
        best = max(overlaps, default=(0.0, -1))
        if best[0] >= IOU_MATCH:
            del unmatched[best[1]]
        else:
            extra += 1
    return extra


class Tally:
    """Counts behind the metrics."""

    def __init__(self) -> None:
        """Start every count at zero."""
        self.counts: dict[str, list[float]] = {}

    def add(self, name: str, hit: float, total: float = 1.0) -> None:
        """Add ``hit`` successes out of ``total`` to a metric."""
        counts = self.counts.setdefault(name, [0.0, 0.0])
        counts[0] += hit
        counts[1] += total

    def rates(self) -> dict[str, float]:
        """Return each metric's rate (successes / total), rounded to 4 places."""
        return {name: round(hit / total, 4) if total else float('nan')
                for name, (hit, total) in sorted(self.counts.items())}


def evaluate(engine: Any, scenes: int, seed: int, sizes: Sequence[tuple[int, int]],
             progress: bool = True) -> dict[str, Any]:
    """Render ``scenes`` scenes from ``seed`` (cycling through ``sizes``) and score the engine."""
    rng = np.random.default_rng(seed)
    names, shapes = list(world.NAMES), list(world.SHAPES)
    tally = Tally()
    started = time.monotonic()
    for index in range(scenes):
        width, height = sizes[index % len(sizes)]
        scene = world.sample_scene(rng, width, height)
        frame = engine.frame(scene.image)
        present = {obj.name for obj in scene.objects}
        detections = engine.detect(frame, labels=names)
        for obj in scene.objects:
            tally.add('detection_recall', found(obj, detections, obj.name))
            tally.add(f'detection_recall_{width}x{height}', found(obj, detections, obj.name))
        false = sum(d.label not in present for d in detections)
        tally.add('false_detections_per_absent_query', false, len(names) - len(present))
        tally.add('extra_detections_per_image', extra_detections(scene.objects, detections))
        shape_detections = engine.detect(frame, labels=shapes)
        for obj in scene.objects:
            tally.add('shape_query_recall', found(obj, shape_detections, obj.shape))
        top = engine.tags(frame, labels=names, top_k=1)[0].label
        tally.add('top_tag_present', top in present)
        for question, answer in scene.qa:
            right = engine.answer(frame, question).answer.strip().lower() == answer
            tally.add('vqa_overall', right)
            tally.add(f'vqa_{question_kind(question)}', right)
        caption = engine.caption(frame)
        named = all(obj.name in caption for obj in scene.objects)
        if len(scene.objects) <= 2:
            tally.add('caption_names_1_2_objects', named)
        tally.add('caption_names_all', named)
        tally.add('caption_exact', caption.strip() == scene.caption)
        if progress and (index + 1) % 20 == 0:
            print(f'eval: {index + 1}/{scenes} scenes, {time.monotonic() - started:.0f} s',
                  file=sys.stderr, flush=True)
    metrics = tally.rates()
    bars = {name: {'value': metrics.get(name), 'bar': bar, 'kind': kind,
                   'passed': _passes(metrics.get(name), bar, kind)}
            for name, (bar, kind) in BARS.items()}
    return {'scenes': scenes, 'seed': seed, 'sizes': [f'{w}x{h}' for w, h in sizes],
            'detection_threshold': engine.detection_threshold, 'metrics': metrics,
            'bars': bars, 'passed': all(entry['passed'] for entry in bars.values()),
            'seconds': round(time.monotonic() - started, 1)}


def _passes(value: float | None, bar: float, kind: str) -> bool:
    if value is None or value != value:  # missing or NaN
        return False
    return value >= bar if kind == 'min' else value <= bar


def format_table(result: dict[str, Any]) -> str:
    """Format the metrics as a text table: barred metrics first, then the others."""
    lines = [f"{'metric':<38} {'value':>7}  {'bar':>8}  result", '-' * 66]
    for name, entry in result['bars'].items():
        sign = '>=' if entry['kind'] == 'min' else '<='
        value = entry['value']
        shown = f'{value:7.3f}' if value is not None else '    n/a'
        lines.append(f"{name:<38} {shown}  {sign} {entry['bar']:<5}  "
                     f"{'PASS' if entry['passed'] else 'FAIL'}")
    for name, value in result['metrics'].items():
        if name not in result['bars']:
            lines.append(f'{name:<38} {value:7.3f}')
    lines.append('-' * 66)
    lines.append(f"{result['scenes']} scenes, seed {result['seed']}, sizes "
                 f"{', '.join(result['sizes'])}, threshold {result['detection_threshold']}: "
                 f"{'all bars met' if result['passed'] else 'some bars missed'} "
                 f"({result['seconds']} s)")
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the eval subcommand: print the table, then the JSON line."""
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine

    engine = PerceptionEngine(EngineConfig(preset=args.preset, device=args.device,
                                           dtype=args.dtype,
                                           detection_threshold=args.threshold))
    engine.load()
    result = evaluate(engine, args.scenes, args.seed, args.sizes, progress=not args.quiet)
    if not args.json:
        print(format_table(result))
    print(json.dumps(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to the vlm-perception CLI."""
    command = subparsers.add_parser(
        'eval', help='score a preset on rendered shapes-world scenes',
        description='Render held-out shapes-world scenes and score detection, tags, VQA and '
                    'captions through the perception engine; prints a table and JSON.')
    command.add_argument('--preset', default='shapes',
                         help='preset name or folder (default: %(default)s)')
    command.add_argument('--scenes', type=int, default=200,
                         help='number of scenes (default: %(default)s)')
    command.add_argument('--seed', type=int, default=12345,
                         help='scene seed; training never uses it (default: %(default)s)')
    command.add_argument('--sizes', type=parse_sizes, default=DEFAULT_SIZES,
                         help='image sizes, cycled: WxH,WxH,... (default: %(default)s)')
    command.add_argument('--threshold', type=float,
                         help="detection threshold (default: the preset's)")
    command.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    command.add_argument('--dtype', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16'))
    command.add_argument('--json', action='store_true', help='print only the JSON line')
    command.add_argument('--quiet', action='store_true', help='no progress lines on stderr')
    command.set_defaults(run=run)
