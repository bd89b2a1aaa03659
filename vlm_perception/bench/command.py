"""
``vlm-perception bench``: engine stages and the node's rate, one table, JSON and a plot.

    vlm-perception bench [--device auto] [--dtype auto] [--compile] [--frames 6] [--all]
                         [--detector MODEL ...] [--only detect ...] [--no-node] [--node-args ...]

1. The engine, per capability, with real-size random models (vlm_perception.bench.models, built
   once, offline): detection (OWL-ViT B/32 at 768 px, the threshold letting about 10 boxes
   through, 12 labels), tags (open_clip ViT-B-32, 12 labels), VQA (BLIP-base and ViLT-B/32) and
   captions (BLIP-base), each on the same rendered 640x480 frames, a fresh Frame per request:
   median and p95 per stage and in total, FPS, GPU memory. Then the comparisons the targets
   name: detection with 1 vs 12 labels (the text cache), 1 vs 4 questions on one frame (in one
   call, as the node answers Questions queued together; and in turn, sharing the image
   encoding), 4 cameras batched vs 4 frames one by one (where the detector batches).
   ``--all`` adds OWLv2 B/16 at 960 px and Grounding DINO-T (detection), SigLIP B/16 (tags),
   SmolVLM-256M (VQA and captions; CUDA only: on a CPU its rows say skipped) and SAM ViT-B
   (segment: masks of the first detector's boxes, about 10 a frame). A slot's flag
   (``--detector``, ``--tagger``, ``--vqa``, ``--captioner``, ``--segmenter``: a hub id or
   folder, repeatable) times that model instead of the slot's default random ones. ``--compile``
   torch.compiles the models (the warm-ups compile). A capability's first model names its row
   (``detect``), further ones add their name (``detect_owlv2``), as do their comparisons.
2. The node (vlm_perception.ros.bench, where rclpy is importable): node processed FPS against
   the bare engine's under the same camera load, and the age of processed frames.

Output: the tables on stdout, ``<out>/bench.json`` (engine and node) and
``<out>/stages.png`` (stage breakdown per capability, matplotlib), ``<out>`` = log/bench.
"""

import argparse
import dataclasses
from dataclasses import dataclass
import importlib.util
import json
from pathlib import Path
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

from vlm_perception.bench import models, stages
from vlm_perception.core.slots import SLOT_OF, SLOTS

ROOT = Path(__file__).resolve().parents[2]
LABELS_12 = ('person', 'cup', 'bottle', 'chair', 'table', 'laptop', 'phone', 'book', 'bag',
             'door', 'dog', 'plant')
TARGETS = {'labels_12_vs_1': 1.1, 'questions_4_vs_1': 1.5}
NODE_ARGS = ('--owlvit-b32', '--seconds', '15')
CAPABILITIES = tuple(slot.capability for slot in SLOTS)  # detect, tags, vqa, caption, segment
CUDA_ONLY = 'CUDA only'


@dataclass(frozen=True)
class Entry:
    """A model the engine part times, on the capabilities it serves."""

    name: str                      # in its rows' names after the first model of a capability
    capabilities: tuple[str, ...]
    title: str                     # the model, as the table names it
    source: str | Callable[[], Any]  # a model id or folder, or the random build making one
    cuda_only: bool = False        # skipped on other devices
    rows: tuple[tuple[str, str], ...] = ()  # (capability, row name), given by entries()
    detector: Optional['Entry'] = None      # segment: the model whose boxes prompt it

    def model_id(self) -> str:
        """Return the model id or folder; a random build is built here on first use."""
        return str(self.source() if callable(self.source) else self.source)


def _random(name: str, capabilities: tuple[str, ...], title: str, build: Callable[[], Any],
            cuda_only: bool = False) -> Entry:
    return Entry(name, capabilities, f'{title} (random weights)', build, cuda_only)


# Each slot's default models, then those --all adds; builds are looked up when they run.
DEFAULTS = (
    _random('owlvit', ('detect',), 'OWL-ViT B/32 768 px',
            lambda: models.build_owlvit_b32(labels=LABELS_12)),
    _random('open_clip', ('tags',), 'open_clip ViT-B-32', lambda: models.build_open_clip_b32()),
    _random('blip', ('vqa',), 'BLIP-base', lambda: models.build_blip_vqa()),
    _random('vilt', ('vqa',), 'ViLT-B/32', lambda: models.build_vilt_b32()),
    _random('blip', ('caption',), 'BLIP-base', lambda: models.build_blip_captioner()),
)
ALL = (
    _random('owlv2', ('detect',), 'OWLv2 B/16 960 px',
            lambda: models.build_owlv2_b16(labels=LABELS_12)),
    _random('grounding_dino', ('detect',), 'Grounding DINO-T',
            lambda: models.build_grounding_dino_t()),
    _random('siglip', ('tags',), 'SigLIP B/16 224 px', lambda: models.build_siglip_b16()),
    _random('smolvlm', ('vqa', 'caption'), 'SmolVLM-256M',
            lambda: models.build_smolvlm_256m(), cuda_only=True),
    _random('sam', ('segment',), 'SAM ViT-B 1024 px', lambda: models.build_sam_b()),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser('bench', help='time the engine per stage and the node',
                                   description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--dtype', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16'))
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the models as they load (the warm-ups compile)')
    parser.add_argument('--frames', type=int, default=6,
                        help='timed requests per measurement, after one warm-up (default 6)')
    parser.add_argument('--all', action='store_true',
                        help='also OWLv2 B/16, Grounding DINO-T, SigLIP B/16, SmolVLM-256M '
                             '(CUDA only) and SAM ViT-B on the detector boxes')
    for slot in SLOTS:  # --detector, --tagger, --vqa, --captioner, --segmenter
        parser.add_argument(slot.flag, dest=slot.parameter, action='append', metavar='MODEL',
                            help=f'{slot.description}; timed instead of its random default '
                                 'models (repeatable)')
    parser.add_argument('--only', action='append', choices=CAPABILITIES,
                        help='capabilities to time (repeatable; default all)')
    parser.add_argument('--no-node', action='store_true', help='skip the node measurement')
    parser.add_argument('--node-args', nargs=argparse.REMAINDER, default=list(NODE_ARGS),
                        help='arguments of the node measurement, python -m '
                             f"vlm_perception.ros.bench (default: {' '.join(NODE_ARGS)})")
    parser.add_argument('--out', default=str(ROOT / 'log' / 'bench'),
                        help='folder of bench.json and stages.png (default log/bench)')
    parser.set_defaults(run=run, formatter=None)


def _short(model_id: str) -> str:
    """Return a model id's last path part as a row-name word: 'google/owlv2-base' -> owlv2_base."""
    return re.sub(r'[^0-9a-z]+', '_', Path(model_id.rstrip('/\\')).name.lower()).strip('_')


def entries(options: argparse.Namespace) -> list[Entry]:
    """
    Return the models to time, their rows named: per slot the flag's models or the defaults.

    ``--all`` adds ALL whatever the flags; ``--only`` keeps the capabilities it names. A
    capability's first model has the capability's name as its row, each further one
    ``<capability>_<model name>``. Segmenters get the first detector, whose boxes prompt them.
    """
    chosen: list[Entry] = []
    for slot in SLOTS:
        given = getattr(options, slot.parameter, None) or []
        chosen += [Entry(_short(model), (slot.capability,), model, model) for model in given] \
            or [entry for entry in DEFAULTS if entry.capabilities == (slot.capability,)]
    if getattr(options, 'all', False):
        chosen += ALL
    detector = next(entry for entry in chosen if 'detect' in entry.capabilities)
    wanted = options.only or CAPABILITIES
    result, taken = [], set()
    for entry in chosen:
        rows = []
        for capability in (c for c in entry.capabilities if c in wanted):
            row = capability if capability not in taken else f'{capability}_{entry.name}'
            while row in taken:
                row += '_'
            taken.add(row)
            rows.append((capability, row))
        if rows:
            result.append(dataclasses.replace(entry, rows=tuple(rows), detector=detector
                                              if 'segment' in entry.capabilities else None))
    return result


def _engine(models_of: dict[str, str], options: argparse.Namespace) -> Any:
    """Return an engine serving capabilities with model ids, on the bench's device and dtype."""
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine
    from vlm_perception.core.options import ModelOptions

    return PerceptionEngine(EngineConfig(
        preset='default', device=options.device, dtype=options.dtype, labels=list(LABELS_12),
        compile=getattr(options, 'compile', False),
        options=ModelOptions(vqa_max_new_tokens=stages.BENCH_ANSWER_TOKENS,
                             caption_max_new_tokens=stages.BENCH_CAPTION_TOKENS),
        **{SLOT_OF[capability].parameter: model for capability, model in models_of.items()}))


def _reset_gpu_memory(device: str) -> None:
    import torch

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_memory(engine: Any) -> Optional[float]:
    """Return the peak CUDA memory (MiB) since the last reset, None on the CPU."""
    import torch

    if not engine.device.startswith('cuda'):
        return None
    return torch.cuda.max_memory_allocated(engine.device) / 2 ** 20


def _measure(name: str, engine: Any, capability: str, frames: Any,
             request: Callable[[Any], Any]) -> dict[str, Any]:
    print(f'  {name}', flush=True)
    return stages.timed_requests(engine, capability, frames, request)


def _counted(request: Callable[[Any], list], counts: list[int]) -> Callable[[Any], list]:
    """Return request, counting the detections each call returns into counts."""
    def counting(frame: Any) -> list:
        found = request(frame)
        counts.append(len(found))
        return found

    return counting


def _detections(detector: Entry, options: argparse.Namespace, frames: Any) -> list[list[Any]]:
    """Return the detector's detections on each frame, at the threshold of about 10 boxes."""
    engine = _engine({'detect': detector.model_id()}, options)
    engine.load(['detect'], warmup=True)
    threshold = stages.calibrated_threshold(engine, engine.frame(frames[0]), LABELS_12)
    found = [engine.detect(rgb, LABELS_12, threshold) for rgb in frames]
    engine.unload()
    return found


def _time_capability(engine: Any, capability: str, row: str, frames: Any,
                     figures: dict[str, Any], prompts: Sequence[list[Any]] = ()) -> dict:
    """Time one capability of a loaded engine; its comparisons go into figures."""
    from vlm_perception.core.backends.contracts import BatchImageEncoder

    suffix = row[len(capability):]  # '' for a capability's first model, else _<name>
    comparisons = figures['comparisons']
    if capability == 'detect':
        threshold = stages.calibrated_threshold(engine, engine.frame(frames[0]), LABELS_12)
        counts: list[int] = []
        result = _measure(f'{row}, 12 labels', engine, capability, frames, _counted(
            lambda frame: engine.detect(frame, LABELS_12, threshold), counts))
        one = _measure(f'{row}, 1 label', engine, capability, frames,
                       lambda frame: engine.detect(frame, LABELS_12[:1], threshold))
        result.update(threshold=threshold, boxes_per_frame=stages.percentile(counts[1:], 0.5))
        comparisons[f'labels_12_vs_1{suffix}'] = stages.ratio(result, one)
        if isinstance(engine.backend(capability), BatchImageEncoder):
            comparisons[f'cameras_4{suffix}'] = _cameras(engine, frames, threshold)
    elif capability == 'tags':
        result = _measure(f'{row}, 12 labels', engine, capability, frames,
                          lambda frame: engine.tags(frame, LABELS_12))
    elif capability == 'vqa':
        result = _measure(f'{row}, 1 question', engine, capability, frames,
                          lambda frame: engine.answer(frame, stages.QUESTIONS[0]))
        # as the node answers Questions queued together: one engine call (BLIP: one batch)
        four = _measure(f'{row}, 4 questions', engine, capability, frames,
                        lambda frame: engine.answer_many(frame, stages.QUESTIONS))
        # as separate requests on the frame: the image encoding (and BLIP's keys/values) shared
        in_turn = _measure(f'{row}, 4 questions in turn', engine, capability, frames,
                           lambda frame: [engine.answer(frame, question)
                                          for question in stages.QUESTIONS][-1])
        result.update(answer_tokens=stages.BENCH_ANSWER_TOKENS)
        comparisons[f'questions_4_vs_1{suffix}'] = stages.ratio(four, result)
        comparisons[f'questions_4_in_turn_vs_1{suffix}'] = stages.ratio(in_turn, result)
    elif capability == 'caption':
        result = _measure(row, engine, capability, frames, engine.caption)
        result.update(caption_tokens=stages.BENCH_CAPTION_TOKENS)
    else:  # segment: each frame's boxes, as its detector found them
        boxes, counts = iter(prompts), []
        result = _measure(f'{row}, the detector boxes', engine, capability, frames, _counted(
            lambda frame: engine.segment(frame, next(boxes)), counts))
        result.update(boxes_per_frame=stages.percentile(counts[1:], 0.5))
    return result


def _time_entry(entry: Entry, options: argparse.Namespace, frames: Any,
                figures: dict[str, Any]) -> None:
    """Time every row of an entry, with one engine (a model serving two loads once)."""
    from vlm_perception.core.device import resolve_device

    device = resolve_device(options.device)
    described = {'model': entry.title}
    if entry.cuda_only and not device.startswith('cuda'):
        for capability, row in entry.rows:
            print(f'  {row}: skipped ({CUDA_ONLY})', flush=True)
            figures['capabilities'][row] = {**described, 'capability': capability,
                                            'skipped': CUDA_ONLY}
        return
    capabilities = [capability for capability, _ in entry.rows]
    prompts = []
    if 'segment' in capabilities:
        prompts = _detections(entry.detector, options, frames)
        described['detector'] = entry.detector.title
    model_id = entry.model_id()
    _reset_gpu_memory(device)
    engine = _engine({capability: model_id for capability in capabilities}, options)
    engine.load(capabilities, warmup=True)
    for capability, row in entry.rows:
        result = _time_capability(engine, capability, row, frames, figures, prompts)
        result.update(described, capability=capability, model_id=model_id,
                      gpu_memory_mb=_gpu_memory(engine))
        figures['capabilities'][row] = result
    engine.unload()


def engine_figures(options: argparse.Namespace,
                   chosen: Optional[Sequence[Entry]] = None) -> dict[str, Any]:
    """Time every capability of the chosen entries (default: entries(options)) and compare."""
    frames = stages.render_frames(options.frames + 1)
    figures: dict[str, Any] = {'capabilities': {}, 'comparisons': {}}
    for entry in entries(options) if chosen is None else chosen:
        _time_entry(entry, options, frames, figures)
    return figures


def _cameras(engine: Any, frames: Any, threshold: float) -> dict[str, Any]:
    """Throughput of 4 frames detected in one batched call against 4 calls."""
    def seconds(work: Callable[[list[Any]], Any]) -> float:
        times = []
        for start in range(max(1, len(frames) - 3)):  # fewer than 4 frames: some repeat
            batch = [engine.frame(frames[(start + i) % len(frames)]) for i in range(4)]
            began = time.perf_counter()
            work(batch)
            times.append(time.perf_counter() - began)
        return stages.percentile(times, 0.5)

    separate = seconds(lambda batch: [engine.detect(frame, LABELS_12, threshold)
                                      for frame in batch])
    batched = seconds(lambda batch: engine.detect_many(batch, LABELS_12, threshold))
    return {'separate_ms': separate * 1e3, 'batched_ms': batched * 1e3,
            'throughput_ratio': separate / batched}


def plot(figures: dict[str, Any], path: Path) -> Optional[Path]:
    """Draw the median time per stage of each capability as stacked bars; None without plt."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as pyplot
    except ImportError:
        print('matplotlib is not installed: no plot', file=sys.stderr)
        return None
    names = [name for name, result in figures['capabilities'].items() if 'stages_ms' in result]
    figure, axes = pyplot.subplots(figsize=(max(8, len(names)), 4))
    bottoms = [0.0] * len(names)
    for stage in stages.STAGES:
        values = [figures['capabilities'][name]['stages_ms'].get(stage, {}).get('p50') or 0.0
                  for name in names]
        axes.bar(names, values, bottom=bottoms, label=stage)
        bottoms = [bottom + value for bottom, value in zip(bottoms, values)]
    axes.tick_params(axis='x', labelrotation=30)
    axes.set_ylabel('median ms per request')
    axes.set_title('Engine time per stage')
    axes.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def table(figures: dict[str, Any]) -> str:
    """Return the per-capability table, skipped rows saying why, and the comparisons."""
    columns = ['capability', 'total p50', 'p95', 'FPS', *stages.STAGES, 'GPU MiB', 'model']
    rows = [' | '.join(columns), ' | '.join('---' for _ in columns)]
    for name, result in figures['capabilities'].items():
        if 'skipped' in result:
            cells = [name, f"skipped: {result['skipped']}", *[''] * (len(columns) - 3)]
        else:
            cells = [name, f"{result['total_ms']['p50']:.1f}",
                     f"{result['total_ms']['p95']:.1f}", f"{result['fps']:.2f}"]
            cells += [f"{result['stages_ms'][stage]['p50']:.1f}" if stage in result['stages_ms']
                      else '0' for stage in stages.STAGES]
            memory = result.get('gpu_memory_mb')
            cells.append('-' if memory is None else f'{memory:.0f}')
        rows.append(' | '.join([*cells, result.get('model', '')]))
    lines = ['ms per request (median over the frames):', *rows, '']
    for name, value in figures['comparisons'].items():
        if isinstance(value, dict):
            lines.append(f"{name}: batched {value['batched_ms']:.0f} ms vs separate "
                         f"{value['separate_ms']:.0f} ms, throughput x"
                         f"{value['throughput_ratio']:.2f}")
        elif value is not None:
            target = TARGETS.get(name)
            verdict = '' if target is None else \
                f" (target <= {target:g}: {'met' if value <= target else 'MISSED'})"
            lines.append(f'{name}: {value:.2f}{verdict}')
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the engine part, then the node part; write bench.json and stages.png."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print('engine, per capability and stage:', flush=True)
    figures = engine_figures(args)
    status = 0
    report: dict[str, Any] = {}
    if not args.no_node:
        if importlib.util.find_spec('rclpy') is None:
            print('no node measurement: rclpy is not importable', file=sys.stderr)
        else:
            from vlm_perception.ros import bench as node_bench

            # the engine part's device, dtype and compile, unless the node arguments say
            settings = ['--device', args.device, '--dtype', args.dtype] + \
                (['--compile'] if args.compile else [])
            status = node_bench.main([*settings, *args.node_args, '--out', str(out)])
            report = json.loads((out / 'bench.json').read_text())
    report['engine'] = figures
    report['engine_options'] = {'device': args.device, 'dtype': args.dtype,
                                'compile': args.compile, 'frames': args.frames, 'all': args.all}
    report['duration_s'] = time.monotonic() - started
    (out / 'bench.json').write_text(json.dumps(report, indent=2, default=str))
    picture = plot(figures, out / 'stages.png')
    print()
    print(table(figures))
    print(f"\n{out / 'bench.json'}" + (f', {picture}' if picture else '')
          + f" ({report['duration_s']:.0f} s in all)")
    return status
