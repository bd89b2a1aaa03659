"""
ONNX export of the detector's and the tagger's image and text encoders (``vlm-perception export``).

Each slot's backend (onnx_runtime.Exportable) names its encoders, builds their torch modules
and gives example inputs; each is exported with torch's dynamo exporter (``torch.onnx.export``,
opset OPSET, fp32, on the CPU: the graph is the same wherever it later runs), with a free first
axis where the encoder takes a batch (images, labels) and the image size and text length of
the model's processor fixed. The manifest, written last, names the model, the backend class,
the opset and every part's inputs and outputs; onnx_runtime.OnnxEncoders checks it at load.
"""

import json
import os
from pathlib import Path
from typing import Any, Sequence
import warnings

from vlm_perception.core.errors import ModelLoadError
from vlm_perception.core.onnx_runtime import (BATCH, FORMAT, input_specs, MANIFEST,
                                              model_identity)
from vlm_perception.core.slots import SLOTS

OPSET = 18  # the dynamo exporter's own (no version conversion); TensorRT 8.6+ reads it
EXPORT_SLOTS = ('detector', 'tagger')
# Weights past this go to a .data file beside the .onnx (a protobuf holds 2 GB at most).
EXTERNAL_DATA_BYTES = 1 << 30


def _size(module: Any) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def export_backend(backend: Any, out_dir: str | os.PathLike) -> list[Path]:
    """
    Export a loaded Exportable backend's encoders to ``out_dir/<slot>/``; returns the files.

    The backend must run torch in fp32. An earlier export there is replaced (its manifest is
    removed first, so a failed export leaves no manifest to load).
    """
    import torch

    folder = Path(out_dir).expanduser() / backend.slot
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    examples = backend.encoder_examples()
    written, parts = [], {}
    for part, encoder in backend.encoders.items():
        example = examples[part]
        path = folder / f'{part}.onnx'
        module = backend.torch_encoder(part).eval()
        batch = torch.export.Dim(BATCH)
        external = _size(module) > EXTERNAL_DATA_BYTES
        with warnings.catch_warnings():
            # every input's free axis is one Dim: the exporter notes the shared name
            warnings.filterwarnings('ignore', message='# The axis name')
            try:
                torch.onnx.export(
                    module, (), str(path), kwargs=example, input_names=list(example),
                    output_names=list(encoder.outputs), opset_version=OPSET, dynamo=True,
                    dynamic_shapes={name: {0: batch} for name in example} if encoder.batch
                    else None, external_data=external, verbose=False)
            except Exception as error:  # noqa: B902 (the exporter's many error types)
                first = (str(error).strip() or type(error).__name__).splitlines()[0]
                raise ModelLoadError(f'cannot export the {part} of the {backend.slot} '
                                     f"'{backend.model_id}' to ONNX: {first}") from error
        written.append(path)
        if external:
            written.append(path.with_name(path.name + '.data'))
        parts[part] = {'file': path.name, 'outputs': list(encoder.outputs)}
    for part, inputs in input_specs(backend.encoders, examples).items():
        parts[part]['inputs'] = inputs
    manifest = {'format': FORMAT, 'slot': backend.slot, 'model': model_identity(backend.model_id),
                'backend': type(backend).__name__, 'opset': OPSET, 'dtype': 'float32',
                'torch': torch.__version__, 'parts': parts}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
    return [*written, folder / MANIFEST]


def export_onnx(config: Any, out_dir: str | os.PathLike,
                slots: Sequence[str] = EXPORT_SLOTS) -> dict[str, list[Path]]:
    """
    Export the encoders of the slots' models of an EngineConfig; returns slot -> files written.

    The models load as the config says (preset, ``<slot>_model``), on the CPU in fp32 and with
    the torch runtime whatever the config's device, dtype and runtimes. ModelLoadError when a
    slot's model family has no export (only OWL-ViT, OWLv2 and open_clip have).
    """
    import dataclasses

    from vlm_perception.core.backends import onnx_families
    from vlm_perception.core.engine import PerceptionEngine
    from vlm_perception.core.onnx_runtime import Exportable, runtime_option

    changes = {'device': 'cpu', 'dtype': 'fp32', 'options': config.options.changed(
        **{runtime_option(slot): 'torch' for slot in EXPORT_SLOTS})}
    if any(field.name == 'compile' for field in dataclasses.fields(config)):
        changes['compile'] = False  # the exporter traces the plain modules, not compiled ones
    engine = PerceptionEngine(dataclasses.replace(config, **changes))
    capability_of = {slot.name: slot.capability for slot in SLOTS}
    written = {}
    for slot in slots:
        if slot not in EXPORT_SLOTS:
            raise ModelLoadError(f'no ONNX export of the {slot} (exported: '
                                 f"{', '.join(EXPORT_SLOTS)})")
        capability = capability_of[slot]
        backend = engine.backend(capability)
        if not isinstance(backend, Exportable):
            raise ModelLoadError(
                f"the {slot} '{backend.model_id}' ({type(backend).__name__}) has no ONNX "
                f"export: exported families are {', '.join(onnx_families(capability))}")
        written[slot] = export_backend(backend, out_dir)
    return written
