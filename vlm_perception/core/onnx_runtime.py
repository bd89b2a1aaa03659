"""
Exported encoders run by onnxruntime: the export folder's manifest, sessions and providers.

``vlm-perception export --onnx DIR`` (onnx_export.py) writes one folder per model slot::

    DIR/detector/image_encoder.onnx, text_encoder.onnx, manifest.json
    DIR/tagger/image_encoder.onnx, text_encoder.onnx, manifest.json

The manifest names the source model, the backend class, the opset and each encoder's inputs
(name, shape with ``batch`` for a free first axis, dtype) and outputs. A backend that can run
exported (``Exportable``: OWL-ViT, OWLv2, open_clip) calls its encoders through
``run_encoder``: the torch module, or, when the slot's ``<slot>_runtime`` option is
``onnxruntime``, the session of ``onnx_dir``'s export; what follows the encoders (OWL's class
head, the tag scores) stays torch. On a CUDA device the sessions take the TensorRT execution
provider (its engines cached in ``<slot>/trt_cache``), else the CUDA one, where the installed
onnxruntime has them (onnxruntime-gpu, or a Jetson build), with the CPU one behind.

Nothing here imports torch or onnxruntime before a backend needs them.
"""

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any

from vlm_perception.core.errors import ModelLoadError
from vlm_perception.core.loading import local_folder
from vlm_perception.core.options import ModelOptions

MANIFEST = 'manifest.json'
FORMAT = 1          # of the manifest: a reader refuses another
BATCH = 'batch'     # the name of a free first axis in the manifest's shapes
EXPORT_COMMAND = 'vlm-perception export --onnx'
TRT_CACHE = 'trt_cache'  # TensorRT engines built from a slot's export, inside its folder


@dataclass(frozen=True)
class Encoder:
    """One exportable encoder: its outputs' names; ``batch``: the first axis is free."""

    outputs: tuple[str, ...]
    batch: bool = True


def runtime_option(slot: str) -> str:
    """Return the option naming a slot's runtime: ``detector_runtime``, ``tagger_runtime``."""
    return f'{slot}_runtime'


def runtime_of(options: ModelOptions, slot: str) -> str:
    """Return the runtime the options give a slot: 'torch' (also for slots without one)."""
    return getattr(options, runtime_option(slot), 'torch')


def model_identity(model_id: str) -> str:
    """Return what a manifest records of a model id: a folder's absolute path, else the id."""
    folder = local_folder(model_id)
    return str(folder) if folder is not None else model_id


def providers(device: str, dtype: str, cache_dir: Path | None = None) -> list:
    """
    Return the execution providers for a torch device, best first, CPU last.

    On CUDA: TensorRT (fp16 engines when the dtype is fp16; built engines are kept in
    ``cache_dir``, as building one takes minutes on a Jetson), then CUDA, each where the
    installed onnxruntime has it.
    """
    import onnxruntime

    chosen: list = []
    if device.startswith('cuda'):
        index = int(device.partition(':')[2] or 0)
        available = onnxruntime.get_available_providers()
        if 'TensorrtExecutionProvider' in available:
            options = {'device_id': index, 'trt_fp16_enable': dtype == 'fp16'}
            if cache_dir is not None:
                options.update(trt_engine_cache_enable=True,
                               trt_engine_cache_path=str(cache_dir))
            chosen.append(('TensorrtExecutionProvider', options))
        if 'CUDAExecutionProvider' in available:
            chosen.append(('CUDAExecutionProvider', {'device_id': index}))
    return [*chosen, 'CPUExecutionProvider']


def _tensor_spec(value: Any, batch: bool) -> dict:
    """Return the manifest entry of an example input: shape (free first axis) and dtype."""
    shape = list(value.shape)
    if batch:
        shape[0] = BATCH
    # as OnnxEncoders.run feeds it, whatever the engine's dtype: exports are fp32
    return {'shape': shape, 'dtype': 'float32' if value.is_floating_point() else 'int64'}


def input_specs(encoders: dict[str, Encoder], examples: dict[str, dict]) -> dict[str, dict]:
    """Return part -> input name -> {shape, dtype} of a backend's example inputs."""
    return {part: {name: _tensor_spec(value, encoder.batch)
                   for name, value in examples[part].items()}
            for part, encoder in encoders.items()}


def _read_manifest(folder: Path, slot: str, onnx_dir: str, model_id: str) -> dict:
    export_hint = f'run `{EXPORT_COMMAND} {onnx_dir} --{slot} {model_id}`'
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"no ONNX export of the {slot} in onnx_dir '{onnx_dir}' "
                             f'({slot}/{MANIFEST} missing): {export_hint}')
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
        if not isinstance(manifest, dict):
            raise ValueError('not a JSON object')
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read '{path}': {error}; {export_hint}") from error
    if manifest.get('format') != FORMAT:
        raise ModelLoadError(f"'{path}' is of manifest format {manifest.get('format')!r}, this "
                             f'version reads {FORMAT}: {export_hint}')
    return manifest


def _check_manifest(manifest: dict, path: Path, backend: Any, slot: str, onnx_dir: str) -> None:
    """Raise ModelLoadError unless the manifest describes this backend's model as it loaded."""
    export_hint = f'run `{EXPORT_COMMAND} {onnx_dir} --{slot} {backend.model_id}`'
    exported = manifest.get('model')
    if exported != model_identity(backend.model_id):
        raise ModelLoadError(
            f"the ONNX {slot} in '{onnx_dir}' is an export of '{exported}', not of the "
            f"{slot} '{backend.model_id}': {export_hint}, or set {slot}_model to the exported "
            'model')
    if manifest.get('backend') != type(backend).__name__:
        raise ModelLoadError(f"'{path}' was exported from a {manifest.get('backend')}, the "
                             f'{slot} is a {type(backend).__name__}: {export_hint}')
    wanted = input_specs(backend.encoders, backend.encoder_examples())
    parts = manifest.get('parts') or {}
    for part, inputs in wanted.items():
        entry = parts.get(part) or {}
        if entry.get('inputs') != inputs:
            raise ModelLoadError(
                f"'{path}': the {part} was exported for inputs {entry.get('inputs')}, the "
                f'{slot} now gives {inputs} (another image size or text length?): {export_hint}')
        if entry.get('outputs') != list(backend.encoders[part].outputs):
            raise ModelLoadError(f"'{path}': the {part} gives {entry.get('outputs')}, expected "
                                 f'{list(backend.encoders[part].outputs)}: {export_hint}')
        if not (path.parent / str(entry.get('file'))).is_file():
            raise ModelLoadError(f'the {part} of the ONNX {slot} is missing: no '
                                 f"'{path.parent / str(entry.get('file'))}': {export_hint}")


class OnnxEncoders:
    """The onnxruntime sessions of one slot's exported encoders."""

    def __init__(self, sessions: dict[str, Any], folder: Path) -> None:
        """Keep the sessions (part name -> InferenceSession) loaded from folder."""
        self.sessions = sessions
        self.folder = folder

    @classmethod
    def load(cls, backend: Any, slot: str) -> 'OnnxEncoders':
        """
        Load the export of a backend's model from its ``onnx_dir`` option's ``<slot>/``.

        ModelLoadError, naming the fix, when the folder, manifest or a file is missing, or when
        the manifest is of another model or of other inputs.
        """
        onnx_dir = backend.options.onnx_dir
        if not onnx_dir:
            raise ModelLoadError(f'{runtime_option(slot)} onnxruntime needs onnx_dir, the '
                                 f'folder `{EXPORT_COMMAND} DIR` wrote')
        try:
            import onnxruntime
        except ImportError as error:
            raise ModelLoadError(f'{runtime_option(slot)} onnxruntime needs the onnxruntime '
                                 'package (requirements.txt; onnxruntime-gpu for CUDA): '
                                 f'{error}') from error
        folder = Path(onnx_dir).expanduser() / slot
        manifest = _read_manifest(folder, slot, onnx_dir, backend.model_id)
        _check_manifest(manifest, folder / MANIFEST, backend, slot, onnx_dir)
        chosen = providers(backend.device, backend.dtype, folder / TRT_CACHE)
        sessions = {}
        for part in backend.encoders:
            path = folder / manifest['parts'][part]['file']
            try:
                sessions[part] = onnxruntime.InferenceSession(str(path), providers=chosen)
            except Exception as error:  # noqa: B902 (onnxruntime's own error classes)
                first = (str(error).strip() or type(error).__name__).splitlines()[0]
                raise ModelLoadError(f"cannot load the ONNX {part} '{path}': {first}") from error
            names = [node.name for node in sessions[part].get_inputs()]
            if names != list(manifest['parts'][part]['inputs']):
                raise ModelLoadError(f"'{path}' takes inputs {names}, its manifest says "
                                     f"{list(manifest['parts'][part]['inputs'])}")
        return cls(sessions, folder)

    @property
    def providers(self) -> list[str]:
        """Return the execution providers the sessions got, best first."""
        return next(iter(self.sessions.values())).get_providers()

    def run(self, part: str, inputs: dict, device: str, dtype: Any) -> tuple:
        """Run one encoder on torch tensors; returns its outputs as tensors on device, dtype."""
        import numpy as np
        import torch

        feeds = {name: value.detach().to('cpu', torch.float32 if value.is_floating_point()
                                         else torch.int64).numpy()
                 for name, value in inputs.items()}
        outputs = self.sessions[part].run(None, feeds)
        return tuple(torch.from_numpy(np.ascontiguousarray(output)).to(
            device, dtype if np.issubdtype(output.dtype, np.floating) else None)
            for output in outputs)


class Exportable:
    """
    A backend whose image and text encoders can be exported to ONNX and run by onnxruntime.

    A class names its ``slot`` and its ``encoders`` (part -> Encoder), builds the torch module
    of each part (``torch_encoder``) and gives example inputs of each (``encoder_examples``,
    a batch of two where the first axis is free); it calls ``start_runtime`` once loaded and
    ``run_encoder`` where it ran the torch model.
    """

    slot = ''
    encoders: dict[str, Encoder] = {}
    onnx: OnnxEncoders | None = None  # the sessions when the slot's runtime is onnxruntime

    def torch_encoder(self, part: str) -> Any:
        """Return the torch.nn.Module of a part, taking its inputs by name."""
        raise NotImplementedError

    def encoder_examples(self) -> dict[str, dict]:
        """Return part -> input name -> an example tensor (in the order forward takes them)."""
        raise NotImplementedError

    def start_runtime(self) -> None:
        """Build the torch encoders; load the export when the slot's runtime is onnxruntime."""
        self._torch_encoders = {part: self.torch_encoder(part) for part in self.encoders}
        if runtime_of(self.options, self.slot) == 'onnxruntime':
            self.onnx = OnnxEncoders.load(self, self.slot)

    @property
    def runtime(self) -> str:
        """Return the runtime of the encoders: 'torch' or 'onnxruntime'."""
        return 'torch' if self.onnx is None else 'onnxruntime'

    @property
    def key(self) -> str:
        """Identity in caches: the backend's, marked when the encoders run exported."""
        key = super().key
        return key if self.onnx is None else f'{key}:onnxruntime'

    def run_encoder(self, part: str, **inputs: Any) -> tuple:
        """Run one encoder (torch or onnxruntime) on tensors; returns a tuple of its outputs."""
        if self.onnx is not None:
            return self.onnx.run(part, inputs, self.device, self.torch_dtype)
        outputs = self._torch_encoders[part](**inputs)
        return outputs if isinstance(outputs, tuple) else (outputs,)
