"""Exceptions meant for people: each says what was wrong and what to do.

The command line turns any `PanguError` into one line on stderr and a non-zero exit.
"""


class PanguError(Exception):
    """Base class of every error this package raises on bad input."""


class ConfigError(PanguError, ValueError):
    """A model, parallel or run configuration is invalid."""


class CheckpointError(PanguError):
    """A checkpoint directory or file is missing, unreadable or does not fit the model."""


class InputError(PanguError, ValueError):
    """Token ids, prompts or other run-time inputs are out of range."""


class DataError(PanguError):
    """Corpus or dataset files are missing, empty or malformed."""
