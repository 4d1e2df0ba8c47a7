"""User-facing error types.

Every mistake a user can make (a bad config value, a malformed data file, a wrong tensor shape) raises
a subclass of :class:`MlclError`. It derives from ``ValueError`` so library callers can catch the usual
type, and the CLI turns it into a one-line message and a non-zero exit instead of a traceback.
"""

from __future__ import annotations


class MlclError(ValueError):
    """Base class of every error caused by user input."""


class ConfigError(MlclError):
    """A config file or ``--set`` override is missing, malformed or inconsistent."""


class DataError(MlclError):
    """A dataset is missing, or a data / hierarchy file is malformed."""


class CheckpointError(MlclError):
    """A checkpoint is missing, corrupt, or does not match the run."""


class TrainingError(MlclError):
    """Training cannot go on (for instance a non-finite loss)."""
