"""User-facing errors.

Every mistake a user can make (a wrong checkpoint, a tampered artifact, a missing provider) raises a
:class:`SacvitError` whose message is ONE line naming the file or option and the fix. The CLI prints
that line and exits with code 1, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SacvitError(Exception):
    """A user error: the message is one line that says what is wrong and how to fix it."""


class ConfigError(SacvitError):
    """An invalid model configuration or variant name."""


class CheckpointError(SacvitError):
    """A checkpoint that cannot be loaded (unsafe, wrong format, wrong shapes)."""
