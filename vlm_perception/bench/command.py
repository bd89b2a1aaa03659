"""
``vlm-perception bench``: engine stages and the node's rate, one table, JSON and a plot.

    vlm-perception bench [--device auto] [--dtype auto] [--frames 6] [--no-node] [--node-args ...]

1. The engine, per capability, with real-size random models (vlm_perception.bench.models, built
   once, offline): detection (OWL-ViT B/32 at 768 px, the threshold letting about 10 boxes
   through, 12 labels), tags (open_clip ViT-B-32, 12 labels), VQA (BLIP-base and ViLT-B/32) and
   captions (BLIP-base), each on the same rendered 640x480 frames, a fresh Frame per request:
   median and p95 per stage and in total, FPS, GPU memory. Then the comparisons the targets
   name: detection with 1 vs 12 labels (the text cache), 1 vs 4 BLIP questions on one frame
   (one image encoding), 4 cameras batched vs 4 frames one by one (where the engine batches).
2. The node (vlm_perception.ros.bench, where rclpy is importable): node processed FPS against
   the bare engine's under the same camera load, and the age of processed frames.

Output: the tables on stdout, ``<out>/bench.json`` (engine and node) and
``<out>/stages.png`` (stage breakdown per capability, matplotlib), ``<out>`` = log/bench.
"""

import argparse
import importlib.util
import json
from pathlib import Path
import sys
import time
from typing import Any, Callable, Optional

from vlm_perception.bench import stages

ROOT = Path(__file__).resolve().parents[2]
LABELS_12 = ('person', 'cup', 'bottle', 'chair', 'table', 'laptop', 'phone', 'book', 'bag',
             'door', 'dog', 'plant')
TARGETS = {'labels_12_vs_1': 1.1, 'questions_4_vs_1': 1.5}
NODE_ARGS = ('--owlvit-b32', '--seconds', '15')


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser('bench', help='time the engine per stage and the node',
                                   description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--dtype', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16'))
    parser.add_argument('--frames', type=int, default=6,
                        help='timed requests per measurement, after one warm-up (default 6)')
    parser.add_argument('--only', action='append', choices=('detect', 'tags', 'vqa', 'caption'),
                        help='capabilities to time (repeatable; default all)')
    parser.add_argument('--no-node', action='store_true', help='skip the node measurement')
    parser.add_argument('--node-args', nargs=argparse.REMAINDER, default=list(NODE_ARGS),
                        help='arguments of the node measurement, python -m '
                             f"vlm_perception.ros.bench (default: {' '.join(NODE_ARGS)})")
    parser.add_argument('--out', default=str(ROOT / 'log' / 'bench'),
                        help='folder of bench.json and stages.png (default log/bench)')
    parser.set_defaults(run=run, formatter=None)


def _engine(slot_models: dict[str, str], device: str, dtype: str) -> Any:
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine
    from vlm_perception.core.options import ModelOptions

    return PerceptionEngine(EngineConfig(
        preset='default', device=device, dtype=dtype, labels=list(LABELS_12),
        options=ModelOptions(vqa_max_new_tokens=stages.BENCH_ANSWER_TOKENS,
                             caption_max_new_tokens=stages.BENCH_CAPTION_TOKENS),
        **slot_models))


def _gpu_memory(engine: Any) -> Optional[float]:
    import torch

    if not engine.device.startswith('cuda'):
        return None
    return torch.cuda.max_memory_allocated(engine.device) / 2 ** 20


def _measure(name: str, engine: Any, capability: str, frames: Any,
             request: Callable[[Any], Any]) -> dict[str, Any]:
    print(f'  {name}', flush=True)
    return stages.timed_requests(engine, capability, frames, request)


def engine_figures(options: argparse.Namespace) -> dict[str, Any]:
    """Time every capability and the comparisons; return the figures."""
    from vlm_perception.bench import models

    wanted = options.only or ['detect', 'tags', 'vqa', 'caption']
    frames = stages.render_frames(options.frames + 1)
    figures: dict[str, Any] = {'capabilities': {}, 'comparisons': {}}
    if 'detect' in wanted:
        engine = _engine({'detector_model': str(models.build_owlvit_b32(labels=LABELS_12))},
                         options.device, options.dtype)
        engine.load(['detect'], warmup=True)
        threshold = stages.calibrated_threshold(engine, engine.frame(frames[0]), LABELS_12)
        twelve = _measure('detect, 12 labels', engine, 'detect', frames,
                          lambda frame: engine.detect(frame, LABELS_12, threshold))
        one = _measure('detect, 1 label', engine, 'detect', frames,
                       lambda frame: engine.detect(frame, LABELS_12[:1], threshold))
        twelve.update(model='OWL-ViT B/32 768 px (random weights)', threshold=threshold,
                      gpu_memory_mb=_gpu_memory(engine))
        figures['capabilities']['detect'] = twelve
        figures['comparisons']['labels_12_vs_1'] = stages.ratio(twelve, one)
        if hasattr(engine, 'detect_many'):
            figures['comparisons']['cameras_4'] = _cameras(engine, frames, threshold)
    if 'tags' in wanted:
        engine = _engine({'tagger_model': str(models.build_open_clip_b32())}, options.device,
                         options.dtype)
        engine.load(['tags'], warmup=True)
        result = _measure('tags, 12 labels', engine, 'tags', frames,
                          lambda frame: engine.tags(frame, LABELS_12))
        result.update(model='open_clip ViT-B-32 (random weights)',
                      gpu_memory_mb=_gpu_memory(engine))
        figures['capabilities']['tags'] = result
    if 'vqa' in wanted:
        for label, build in (('vqa', models.build_blip_vqa), ('vqa_vilt', models.build_vilt_b32)):
            engine = _engine({'vqa_model': str(build())}, options.device, options.dtype)
            engine.load(['vqa'], warmup=True)
            one = _measure(f'{label}, 1 question', engine, 'vqa', frames,
                           lambda frame: engine.answer(frame, stages.QUESTIONS[0]))
            four = _measure(f'{label}, 4 questions', engine, 'vqa', frames,
                            lambda frame: [engine.answer(frame, question)
                                           for question in stages.QUESTIONS][-1])
            one.update(model=('BLIP-base' if label == 'vqa' else 'ViLT-B/32')
                       + ' (random weights)', gpu_memory_mb=_gpu_memory(engine),
                       answer_tokens=stages.BENCH_ANSWER_TOKENS)
            figures['capabilities'][label] = one
            figures['comparisons'][f'questions_4_vs_1{"" if label == "vqa" else "_vilt"}'] = \
                stages.ratio(four, one)
    if 'caption' in wanted:
        engine = _engine({'captioner_model': str(models.build_blip_captioner())},
                         options.device, options.dtype)
        engine.load(['caption'], warmup=True)
        result = _measure('caption', engine, 'caption', frames, engine.caption)
        result.update(model='BLIP-base (random weights)', gpu_memory_mb=_gpu_memory(engine),
                      caption_tokens=stages.BENCH_CAPTION_TOKENS)
        figures['capabilities']['caption'] = result
    return figures


def _cameras(engine: Any, frames: Any, threshold: float) -> dict[str, Any]:
    """Throughput of 4 frames detected in one batched call against 4 calls."""
    def seconds(work: Callable[[list[Any]], Any]) -> float:
        times = []
        for start in range(0, len(frames) - 3, 1):
            batch = [engine.frame(rgb) for rgb in frames[start:start + 4]]
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
    names = list(figures['capabilities'])
    figure, axes = pyplot.subplots(figsize=(8, 4))
    bottoms = [0.0] * len(names)
    for stage in stages.STAGES:
        values = [figures['capabilities'][name]['stages_ms'].get(stage, {}).get('p50') or 0.0
                  for name in names]
        axes.bar(names, values, bottom=bottoms, label=stage)
        bottoms = [bottom + value for bottom, value in zip(bottoms, values)]
    axes.set_ylabel('median ms per request')
    axes.set_title('Engine time per stage')
    axes.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def table(figures: dict[str, Any]) -> str:
    """Return the per-capability table and the comparisons with their targets."""
    columns = ['capability', 'total p50', 'p95', 'FPS', *stages.STAGES]
    rows = [' | '.join(columns), ' | '.join('---' for _ in columns)]
    for name, result in figures['capabilities'].items():
        cells = [name, f"{result['total_ms']['p50']:.1f}", f"{result['total_ms']['p95']:.1f}",
                 f"{result['fps']:.2f}"]
        cells += [f"{result['stages_ms'][stage]['p50']:.1f}" if stage in result['stages_ms']
                  else '0' for stage in stages.STAGES]
        rows.append(' | '.join(cells))
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

            status = node_bench.main([*args.node_args, '--out', str(out)])
            report = json.loads((out / 'bench.json').read_text())
    report['engine'] = figures
    report['engine_options'] = {'device': args.device, 'dtype': args.dtype,
                                'frames': args.frames}
    report['duration_s'] = time.monotonic() - started
    (out / 'bench.json').write_text(json.dumps(report, indent=2, default=str))
    picture = plot(figures, out / 'stages.png')
    print()
    print(table(figures))
    print(f"\n{out / 'bench.json'}" + (f', {picture}' if picture else '')
          + f" ({report['duration_s']:.0f} s in all)")
    return status
