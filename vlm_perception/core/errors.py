"""Errors the perception core raises on purpose, each with a one-line message for people."""


class InputError(ValueError):
    """Bad user input: an image, label list, question or option the core cannot use."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and how to fix it."""
