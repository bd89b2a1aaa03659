"""Errors the perception core raises on purpose, each with a one-line message for people."""


class InputError(ValueError):
    """Bad user input: an image, label list, question or option the core cannot use."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and how to fix it."""


class OutOfMemory(RuntimeError):
    """
    The device ran out of memory running or loading a model; not the caller's fault.

    The engine trimmed its caches before raising and stays usable: the request (or frame) that
    failed is lost, the next one may succeed. The message says what ran out where.
    """


class CompileFallback(RuntimeWarning):
    """torch.compile failed for a model's module (EngineConfig.compile): it runs eagerly."""
