"""The backends' error type, in a module of its own: what picks a backend (``factory``, and through
it the CLI's --help) imports it without numpy."""

from __future__ import annotations

from sacvit_deploy.core.errors import SacvitError


class BackendError(SacvitError):
    """A backend that cannot run: missing package or provider, bad feed, incompatible engine."""
