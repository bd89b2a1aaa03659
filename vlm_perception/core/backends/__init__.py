"""
Model backends, one module per capability; a registry picks the class from the architecture.

The registry maps (capability, architecture key) to a backend class, where the architecture key
is the transformers ``model_type`` of the model's config, or ``open_clip``; each class keeps the
capability's contract (contracts.py). Backend modules are imported only when a model of theirs
is loaded, so an unused capability costs nothing.
"""

from importlib import import_module
from typing import Any

from vlm_perception.core.backends.contracts import CONTRACTS
from vlm_perception.core.errors import ModelLoadError
from vlm_perception.core.loading import model_type

# (capability, architecture key) -> 'module:Class' inside this package
REGISTRY = {
    ('detect', 'owlvit'): 'detection:OwlViTDetector',
    ('detect', 'owlv2'): 'detection:Owlv2Detector',
    ('detect', 'grounding-dino'): 'grounding:GroundingDinoDetector',
    ('detect', 'mm-grounding-dino'): 'grounding:MMGroundingDinoDetector',
    ('tags', 'open_clip'): 'classification:OpenClipClassifier',
    ('tags', 'siglip'): 'classification:SiglipTagger',
    ('tags', 'siglip2'): 'classification:Siglip2Tagger',
    ('vqa', 'vilt'): 'vqa:ViltAnswerer',
    ('vqa', 'blip'): 'vqa:BlipAnswerer',
    ('caption', 'blip'): 'captioning:BlipCaptioner',
}


def create_backend(capability: str, model_id: str, device: str, dtype: str) -> Any:
    """Load the model ``model_id`` for a capability with the backend its architecture needs."""
    architecture = model_type(model_id)
    entry = REGISTRY.get((capability, architecture))
    if entry is None:
        supported = ', '.join(sorted(kind for cap, kind in REGISTRY if cap == capability))
        raise ModelLoadError(f"model '{model_id}' is a {architecture} model, which cannot do "
                             f'{capability} (supported: {supported})')
    module_name, class_name = entry.split(':')
    backend_class = getattr(import_module(f'{__name__}.{module_name}'), class_name)
    backend = backend_class(model_id, device, dtype)
    contract = CONTRACTS[capability]
    if not isinstance(backend, contract):  # a registered class that does not keep its contract
        raise ModelLoadError(f'{class_name} does not implement {contract.__name__}, which '
                             f'{capability} needs')
    return backend
