"""The errors gmmvae raises for input it cannot use; each message says how to fix it."""

from __future__ import annotations


class GMMVAEInputError(ValueError):
    """Raised for input that gmmvae cannot use; the message says how to fix it."""


class MissingKeyError(GMMVAEInputError, KeyError):
    """Raised when an obs column, layer or gene that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelExistsError(GMMVAEInputError, FileExistsError):
    """Raised when saving over an existing path without ``overwrite=True``."""


class ModelNotFoundError(GMMVAEInputError, FileNotFoundError):
    """Raised when a path to load from is not a saved gmmvae model."""
