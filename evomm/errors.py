"""Exceptions evomm raises for bad input.

Every error a user can cause (a bad recipe, an unreadable checkpoint, models that cannot be
merged) is an `EvommError`: the command line prints its one-line message and exits non-zero
instead of showing a traceback. Add new subclasses here so callers can catch by kind.
"""

from __future__ import annotations


class EvommError(Exception):
    """Base class: a problem with the user's input, explained in one line."""


class ConfigError(EvommError):
    """A recipe / config file is invalid (the message names the key)."""


class CheckpointError(EvommError):
    """A checkpoint cannot be found, read, or is corrupt."""


class PickleRefusedError(CheckpointError):
    """A pickled checkpoint (.bin/.pt/.ckpt) was found but the user did not opt in."""


class ArchitectureError(EvommError):
    """The models of a merge do not have compatible architectures."""


class ShapeMismatchError(ArchitectureError):
    """Tensors that should be merged together have different shapes."""


class MissingTensorError(ArchitectureError):
    """A tensor needed for the merge is absent from one of the sources."""


class TokenizerMismatchError(EvommError):
    """Models whose embeddings are merged use different tokenizers."""


class OutputExistsError(EvommError):
    """The output directory already exists and is not empty."""


class DatasetError(EvommError):
    """A benchmark / evaluation dataset is missing, empty, or has the wrong columns."""


class MetricError(EvommError):
    """A metric got inputs it cannot score (e.g. lists of different lengths)."""


class SearchError(EvommError):
    """An evolutionary search cannot go on (e.g. every candidate of a generation failed)."""


class ResumeError(EvommError):
    """A run directory cannot be resumed (missing or mismatching run state)."""


class DFSError(EvommError):
    """A data-flow-space (layer path) merge is invalid: a bad path, scales, or source set."""
