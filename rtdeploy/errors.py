"""Typed errors. The library raises these; only the CLI turns them into messages and exit codes.

Every message says what was wrong and what to do about it, in one line.
"""
from __future__ import annotations


class RtdeployError(Exception):
    """Base class. `exit_code` is what the CLI exits with: 2 for bad input, 1 for failures."""

    exit_code = 1


class UserInputError(RtdeployError):
    """The user asked for something invalid (a flag value, a path, a file): exit 2."""

    exit_code = 2


class ConfigError(UserInputError):
    """A setting is out of range or inconsistent. The message names the CLI flag at fault."""


class RegistryError(UserInputError):
    """An unknown name was looked up in a registry (model, criterion, loss, provider)."""


class DataError(UserInputError):
    """A dataset or image could not be used."""


class CheckpointError(UserInputError):
    """A file is not a loadable rtdeploy checkpoint (or would need unpickling code)."""


class ModelFileError(UserInputError):
    """An ONNX file is missing, invalid, or not an image classifier."""


class OutputError(UserInputError):
    """An output path cannot be written (exists without --force, unwritable folder)."""


class WriteError(RtdeployError, OSError):
    """Writing an output failed midway (disk full, folder gone): exit 1. Nothing partial is left.

    Also an OSError, so callers that handle I/O failures keep catching it."""


class PipelineError(RtdeployError):
    """A stage ran but its result failed a check (parity, folding, pruning): exit 1."""
