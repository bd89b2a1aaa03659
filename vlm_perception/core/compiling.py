"""
torch.compile of the loaded models (``EngineConfig.compile``), falling back to eager per module.

Each backend names the modules worth compiling (``Backend.compile_modules``: the image encoder
of a transformers model, else the whole model); their ``forward`` is replaced, on the instance,
by a CompiledForward. Compilation is lazy: the first call compiles (the engine's warm-up, else the
first frame), and a new input shape compiles again (Grounding DINO's input follows the frame's
aspect ratio). When torch.compile fails (no C compiler, an op it cannot trace), the module runs
eagerly from then on, with a CompileFallback warning naming the model, the module and the
reason; a failed call is run again eagerly, so the engine keeps serving.

Environment variable ``VLM_PERCEPTION_COMPILE_BACKEND`` names torch.compile's backend (default
inductor); ``eager`` and ``aot_eager`` trace without generating code, for tests and diagnosis.
"""

import os
from typing import Any
import warnings

from vlm_perception.core.errors import CompileFallback
from vlm_perception.core.loading import is_out_of_memory

BACKEND_ENV = 'VLM_PERCEPTION_COMPILE_BACKEND'
DEFAULT_BACKEND = 'inductor'


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0]}' if text else type(error).__name__


def _warn(what: str, error: BaseException) -> None:
    warnings.warn(f'torch.compile failed for {what} ({_reason(error)}); it runs eagerly',
                  CompileFallback, stacklevel=3)


class CompiledForward:
    """A module's forward run through torch.compile; eager for good once that fails."""

    def __init__(self, module: Any, what: str, compiler: str) -> None:
        """Compile ``module.forward`` (lazily: the first call compiles); ``what`` names it."""
        import torch

        self.module = module
        self.what = what
        self.eager = module.forward  # the class's forward, bound
        self.compiled = torch.compile(self.eager, backend=compiler)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the compiled forward; on its failure run the eager one and keep it."""
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: B902 (dynamo's and the compilers' errors alike)
            if is_out_of_memory(error):  # the device is full, not the compiler at fault
                raise
            result = self.eager(*args, **kwargs)  # raises if the input, not compiling, is bad
            vars(self.module).pop('forward', None)  # the class's forward shows again
            _warn(self.what, error)
            return result


def is_compiled(module: Any) -> bool:
    """Whether a module's forward runs through torch.compile (compile_backend, no fallback)."""
    return isinstance(vars(module).get('forward'), CompiledForward)


def compile_backend(backend: Any) -> list[str]:
    """
    Put torch.compile on the modules of a loaded backend (compile_modules); return their names.

    A module torch.compile refuses stays eager, with a CompileFallback warning.
    """
    compiler = os.environ.get(BACKEND_ENV, '').strip() or DEFAULT_BACKEND
    compiled = []
    for name, module in backend.compile_modules().items():
        if is_compiled(module):  # shared by another backend object
            continue
        what = f"the {name} of the {backend.capability} model '{backend.model_id}'"
        try:
            module.forward = CompiledForward(module, what, compiler)
        except Exception as error:  # noqa: B902 (torch.compile missing or refusing alike)
            _warn(what, error)
            continue
        compiled.append(name)
    return compiled
