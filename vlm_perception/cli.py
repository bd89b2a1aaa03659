"""
``vlm-perception``: run the perception engine on image files, no ROS needed.

Examples::

    vlm-perception detect kitchen.jpg --labels "cup,person"
    vlm-perception tags kitchen.jpg --labels "kitchen,office,street" --json
    vlm-perception ask kitchen.jpg "How many cups are there?"
    vlm-perception caption kitchen.jpg
    vlm-perception describe kitchen.jpg --preset shapes --json
    vlm-perception export --onnx exported/          # then --detector-runtime onnxruntime ...

Subcommands come from modules exposing ``register(subparsers)``: this one (detect, tags, ask,
caption, describe, export), ``vlm_perception.shapes.evaluate``, ``vlm_perception.bench.command``,
``vlm_perception.bag.command`` (bag, bag-shapes) and, when ROS 2 is importable,
``vlm_perception.ros.client``.
"""

import argparse
import importlib
import json
from pathlib import Path
import sys
from typing import Callable, Sequence, TYPE_CHECKING

from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.onnx_export import EXPORT_SLOTS
from vlm_perception.core.options import OPTIONS
from vlm_perception.core.presets import PRESET_NAMES
from vlm_perception.core.slots import deprecation, OLD_FLAGS, SLOTS

if TYPE_CHECKING:  # the engine (numpy, model code) is imported only when a command needs it
    from vlm_perception.core.engine import Frame, PerceptionEngine

PROG = 'vlm-perception'
# Modules that add subcommands; ROS_EXTENSION is skipped silently when ROS 2 is not importable.
ROS_EXTENSION = 'vlm_perception.ros.client'
EXTENSIONS = ('vlm_perception.shapes.evaluate', 'vlm_perception.bench.command',
              'vlm_perception.bag.command', ROS_EXTENSION)


class _DeprecatedFlag(argparse.Action):
    """A former model flag (--classifier): stores into its slot's option, warns on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        slot = OLD_FLAGS[option_string]
        print(f'{PROG}: warning: {deprecation(option_string, slot.flag, "option")}',
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def engine_options() -> argparse.ArgumentParser:
    """Return a parent parser with the options that choose models, device and vocabulary."""
    parent = argparse.ArgumentParser(add_help=False)
    models = parent.add_argument_group('models')
    models.add_argument('--preset', default='default',
                        help=f"preset name ({', '.join(PRESET_NAMES)}) or preset folder "
                             '(default: %(default)s)')
    for slot in SLOTS:  # --detector, --tagger, --vqa, --captioner
        models.add_argument(slot.flag, dest=slot.parameter, metavar='MODEL',
                            help=f"{slot.description} (default: the preset's)")
        for old in slot.old_flags:  # deprecated: sets the same option, warns
            models.add_argument(old, dest=slot.parameter, metavar='MODEL',
                                action=_DeprecatedFlag, help=argparse.SUPPRESS)
    models.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    models.add_argument('--dtype', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16'),
                        help='auto = fp16 on CUDA, fp32 on CPU')
    models.add_argument('--compile', action='store_true',
                        help='torch.compile the models as they load (the first run compiles; '
                             'eager, with a warning, where that fails)')
    tuning = parent.add_argument_group('model options')
    for option in OPTIONS:  # --detection-templates, --vqa-max-new-tokens, ...
        tuning.add_argument(option.flag, dest=option.name, default=option.default,
                            nargs='+' if option.kind == 'string_array' else None,
                            type=int if option.kind == 'integer' else str,
                            choices=option.choices or None,
                            metavar={'string_array': 'TEMPLATE', 'integer': 'N'}.get(
                                option.kind, None if option.choices else 'TEXT'),
                            help=option.description.replace('%', '%%')
                            + ' (default: %(default)s)')
    parent.add_argument('--labels', help="comma-separated labels (default: the preset's)")
    parent.add_argument('--threshold', type=float,
                        help="detection score threshold 0..1 (default: the preset's)")
    parent.add_argument('--json', action='store_true', help='print JSON instead of text')
    return parent


def make_engine(args: argparse.Namespace) -> 'PerceptionEngine':
    """Build a PerceptionEngine from the parsed engine options (models load on first use)."""
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine
    from vlm_perception.core.options import ModelOptions

    return PerceptionEngine(EngineConfig(
        preset=args.preset, device=args.device, dtype=args.dtype, compile=args.compile,
        options=ModelOptions(**{option.name: getattr(args, option.name) for option in OPTIONS}),
        labels=None if args.labels is None else args.labels.split(','),
        detection_threshold=args.threshold,
        **{slot.parameter: getattr(args, slot.parameter) for slot in SLOTS}))


def _detect(args: argparse.Namespace) -> dict:
    engine, frame = _engine_and_frame(args)
    return {'detections': [d.to_dict() for d in engine.detect(frame)]}


def _tags(args: argparse.Namespace) -> dict:
    engine, frame = _engine_and_frame(args)
    labels = None if args.labels is None else engine.labels
    return {'tags': [t.to_dict() for t in engine.tags(frame, labels=labels, top_k=args.top_k)]}


def _ask(args: argparse.Namespace) -> dict:
    engine, frame = _engine_and_frame(args)
    return engine.answer(frame, args.question).to_dict()


def _caption(args: argparse.Namespace) -> dict:
    engine, frame = _engine_and_frame(args)
    return {'caption': engine.caption(frame, prompt=args.prompt)}


def _describe(args: argparse.Namespace) -> dict:
    engine, frame = _engine_and_frame(args)
    return engine.describe(frame, question=args.question).to_dict()


def _engine_and_frame(args: argparse.Namespace) -> tuple['PerceptionEngine', 'Frame']:
    from vlm_perception.core.image import load_image

    image = load_image(args.image)  # before any model loads: a bad path fails fast
    engine = make_engine(args)
    return engine, engine.frame(image)


def _export(args: argparse.Namespace) -> dict:
    from vlm_perception.core.onnx_export import export_onnx

    engine = make_engine(args)  # checks the options; export_onnx loads the models for export
    slots = args.slot or list(EXPORT_SLOTS)
    written = export_onnx(engine.config, args.onnx, slots)
    capability_of = {slot.name: slot.capability for slot in SLOTS}
    return {'onnx_dir': str(Path(args.onnx).expanduser().resolve()), 'exports': [
        {'slot': slot, 'model': engine.model_ids[capability_of[slot]],
         'files': [str(path) for path in paths],
         'bytes': sum(path.stat().st_size for path in paths)} for slot, paths in written.items()]}


def _format_detections(result: dict) -> str:
    lines = [f"{d['label']}  {d['score']:.3f}  centre ({d['center_x']:.1f}, {d['center_y']:.1f})"
             f"  size {d['size_x']:.1f} x {d['size_y']:.1f}" for d in result['detections']]
    return '\n'.join(lines) or 'no detections'


def _format_tags(result: dict) -> str:
    return '\n'.join(f"{tag['score']:.3f}  {tag['label']}" for tag in result['tags'])


def _format_answer(result: dict) -> str:
    return f"{result['answer']}  (confidence {result['confidence']:.3f})"


def _format_description(result: dict) -> str:
    return result['summary']


def _format_export(result: dict) -> str:
    lines = [f"{export['slot']}: {export['model']} -> "
             f"{', '.join(Path(file).name for file in export['files'])} in "
             f"{Path(export['files'][0]).parent} ({export['bytes'] / 1e6:.1f} MB)"
             for export in result['exports']]
    return '\n'.join(lines)


# subcommand -> (run, text formatter, help)
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    'detect': (_detect, _format_detections, 'open-vocabulary detection of --labels'),
    'tags': (_tags, _format_tags, 'zero-shot scene tags (best first)'),
    'ask': (_ask, _format_answer, 'answer a question about the image'),
    'caption': (_caption, lambda result: result['caption'], 'caption the image'),
    'describe': (_describe, _format_description,
                 'caption + tags + detections + summary paragraph'),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the engine subcommands: detect, tags, ask, caption, describe, export."""
    parent = engine_options()
    for name, (run, formatter, help_text) in COMMANDS.items():
        command = subparsers.add_parser(name, parents=[parent], help=help_text,
                                        description=help_text)
        command.add_argument('image', help='image file (JPEG, PNG, ...)')
        if name == 'ask':
            command.add_argument('question', help='question about the image')
        if name == 'tags':
            command.add_argument('--top-k', type=int, default=5,
                                 help='number of tags (default: %(default)s)')
        if name == 'caption':
            command.add_argument('--prompt', help="text the caption continues, e.g. 'a photo of'")
        if name == 'describe':
            command.add_argument('--question', help='also answer this question')
        command.set_defaults(run=run, formatter=formatter)
    help_text = ('export the image and text encoders of the detector and the tagger to ONNX, '
                 'for --detector-runtime / --tagger-runtime onnxruntime with --onnx-dir OUT_DIR')
    command = subparsers.add_parser('export', parents=[parent], help=help_text,
                                    description=help_text + ' (exported on the CPU in fp32, '
                                    'whatever --device and --dtype say)')
    command.add_argument('--onnx', required=True, metavar='OUT_DIR',
                         help='folder to write OUT_DIR/<slot>/{image,text}_encoder.onnx and '
                              'manifest.json into (an earlier export there is replaced)')
    command.add_argument('--slot', action='append', choices=EXPORT_SLOTS,
                         help='export only this slot (repeatable; default: both)')
    command.set_defaults(run=_export, formatter=_format_export)


def _register_extensions(subparsers: argparse._SubParsersAction) -> None:
    for module_name in EXTENSIONS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing_itself = isinstance(error, ModuleNotFoundError) and error.name == module_name
            if module_name == ROS_EXTENSION or missing_itself:
                continue  # ROS 2 not sourced / extension not installed: its commands are absent
            print(f'{PROG}: warning: {module_name} not loaded: {error}', file=sys.stderr)
            continue
        module.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser, extension subcommands included."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Vision-language perception on images: detection, tags, VQA, '
                               'captions and scene descriptions.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    register(subparsers)
    _register_extensions(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 input or model error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    formatter = getattr(args, 'formatter', None)
    try:
        result = args.run(args)
    except (InputError, ModelLoadError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f'{PROG}: error: {message}', file=sys.stderr)
        return 1
    if formatter is None:   # an extension's command printed its own output
        return int(result or 0)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(formatter(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
