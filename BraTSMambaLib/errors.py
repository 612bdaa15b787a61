"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class BraTSInputError(ValueError):
    """Bad input: a missing or unreadable file, wrong geometry, bad labels, an existing output.

    The message names the file and what is wrong; nothing has been written when it is raised.
    """


class ModelPackageError(BraTSInputError):
    """A model package or checkpoint that cannot be used (wrong architecture, bad checksum...)."""


class BackendUnavailableError(RuntimeError):
    """A selective-scan backend was asked for explicitly but cannot run here."""
