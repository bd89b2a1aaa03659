"""
Model backends, one module per capability; a registry picks the class from the architecture.

The registry maps (capability, architecture key) to a backend class, where the architecture key
is the transformers ``model_type`` of the model's config, or ``open_clip``; each class keeps the
capability's contract (contracts.py). Backend modules are imported only when a model of theirs
is loaded, so an unused capability costs nothing.

Adding a model family is one module (a class keeping the contract) plus one REGISTRY line, or,
outside this package, one ``register`` call; the CLI flags and node parameters of the slots
then take its model ids (README, "Adding a model").
"""

from importlib import import_module
from typing import Any, Union

from vlm_perception.core.backends.contracts import CONTRACTS
from vlm_perception.core.errors import ModelLoadError
from vlm_perception.core.loading import model_type
from vlm_perception.core.onnx_runtime import Exportable, runtime_of, runtime_option
from vlm_perception.core.options import ModelOptions
from vlm_perception.core.slots import SLOT_OF

# (capability, architecture key) -> 'module:Class' inside this package, or a class (register)
REGISTRY: dict[tuple[str, str], Union[str, type]] = {
    ('detect', 'owlvit'): 'detection:OwlViTDetector',
    ('detect', 'owlv2'): 'detection:Owlv2Detector',
    ('detect', 'grounding-dino'): 'grounding:GroundingDinoDetector',
    ('detect', 'mm-grounding-dino'): 'grounding:MMGroundingDinoDetector',
    ('detect', 'omdet-turbo'): 'omdet_turbo:OmDetTurboDetector',
    ('tags', 'open_clip'): 'classification:OpenClipClassifier',
    ('tags', 'siglip'): 'classification:SiglipTagger',
    ('tags', 'siglip2'): 'classification:Siglip2Tagger',
    ('vqa', 'vilt'): 'vqa:ViltAnswerer',
    ('vqa', 'blip'): 'vqa:BlipAnswerer',
    ('caption', 'blip'): 'captioning:BlipCaptioner',
    # One generative VLM class serves both capabilities: the engine loads it once for both.
    ('vqa', 'smolvlm'): 'generative:SmolVLM',
    ('caption', 'smolvlm'): 'generative:SmolVLM',
    ('vqa', 'idefics3'): 'generative:Idefics3',
    ('caption', 'idefics3'): 'generative:Idefics3',
    ('vqa', 'qwen2_5_vl'): 'generative:Qwen25VL',
    ('caption', 'qwen2_5_vl'): 'generative:Qwen25VL',
    ('segment', 'sam'): 'segmentation:SamSegmenter',
    ('segment', 'sam2'): 'segmentation:Sam2Segmenter',
}


def register(capability: str, architecture: str, backend_class: type) -> None:
    """
    Serve a capability for models of an architecture (their ``model_type``) with a class.

    The class is built as ``backend_class(model_id, device, dtype, options)`` and must keep the
    capability's contract (contracts.py); a registered pair is replaced.
    """
    if capability not in CONTRACTS:
        raise ValueError(f"unknown capability {capability!r} (one of {', '.join(CONTRACTS)})")
    REGISTRY[(capability, architecture)] = backend_class


def _backend_class(entry: Union[str, type]) -> type:
    if not isinstance(entry, str):
        return entry
    module_name, class_name = entry.split(':')
    return getattr(import_module(f'{__name__}.{module_name}'), class_name)


def create_backend(capability: str, model_id: str, device: str, dtype: str,
                   options: ModelOptions | None = None) -> Any:
    """Load the model ``model_id`` for a capability with the backend its architecture needs."""
    architecture = model_type(model_id)
    entry = REGISTRY.get((capability, architecture))
    if entry is None:
        supported = ', '.join(sorted(kind for cap, kind in REGISTRY if cap == capability))
        raise ModelLoadError(f"model '{model_id}' is a {architecture} model, which cannot do "
                             f'{capability} (supported: {supported})')
    backend_class = _backend_class(entry)
    slot = SLOT_OF[capability].name
    runtime = runtime_of(options or ModelOptions(), slot)
    if runtime != 'torch' and not issubclass(backend_class, Exportable):  # before the load
        raise ModelLoadError(
            f'{runtime_option(slot)} {runtime} runs exported '
            f"{', '.join(onnx_families(capability))} models only; '{model_id}' is a "
            f'{architecture} model: use {runtime_option(slot)} torch')
    backend = backend_class(model_id, device, dtype, options)
    contract = CONTRACTS[capability]
    if not isinstance(backend, contract):  # a registered class that does not keep its contract
        raise ModelLoadError(f'{backend_class.__name__} does not implement '
                             f'{contract.__name__}, which {capability} needs')
    return backend


def onnx_families(capability: str) -> list[str]:
    """Return the architectures whose backend for a capability has an ONNX export."""
    return sorted(architecture for (served, architecture), entry in REGISTRY.items()
                  if served == capability and issubclass(_backend_class(entry), Exportable))


def serves(backend: Any, capability: str, model_id: str) -> bool:
    """
    Tell whether a loaded backend can serve a capability with the model ``model_id`` as it is.

    True when it holds that model and the registry gives the capability the backend's very class
    for the model's architecture (a generative VLM answers and captions): the engine then shares
    the object instead of loading the model again. Device and dtype are the engine's, the same
    for every backend it holds.
    """
    if getattr(backend, 'model_id', None) != model_id:
        return False
    try:
        architecture = model_type(model_id)
    except ModelLoadError:
        return False
    entry = REGISTRY.get((capability, architecture))
    return entry is not None and _backend_class(entry) is type(backend) and \
        isinstance(backend, CONTRACTS[capability])
