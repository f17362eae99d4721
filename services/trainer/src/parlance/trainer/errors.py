"""The trainer's one error type: what the CLI prints as a clear message and a non-zero exit."""

from __future__ import annotations


class TrainError(Exception):
    """A job refused or failed for a reason the user can act on (bad data, a missing base, an
    unreachable gateway). The message is complete: the CLI prints it as it is."""
