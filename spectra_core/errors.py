"""Errors users see. Each says what was wrong and how to fix it; the CLI prints them without a traceback."""

from __future__ import annotations


class SpectraError(Exception):
    """Base class: a user-facing error with an optional hint on how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class ConfigError(SpectraError):
    """A configuration file or override is invalid."""


class PluginError(SpectraError):
    """A plugin failed to load, clashes with another, or returned something unusable."""


class InputError(SpectraError):
    """A model, checkpoint, dataset or result file given as input is missing or malformed."""


class TrainingError(SpectraError):
    """Training cannot start or had to stop (NaN loss, changed config on resume, ...)."""
