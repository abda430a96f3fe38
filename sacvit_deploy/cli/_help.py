"""One place where every command's help and usage errors are tidied (issue 24 points 8, 9).

typer shows a type beside every parameter: ``<bool>`` beside each flag (which takes no value),
``<list[str]>`` beside a repeatable argument; and its pydantic-based coercion words a bad choice as
"Value error, 'json' is not one of ...". :class:`SacvitGroup` is the root group's class, so every
command, including one added later, passes through it: flags show no type, a list shows its item
type once with ``...``, and a usage error reads like click's own. The exit code of a usage error
stays click's 2.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import typer
from typer.core import TyperGroup

_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


# typer carries its own copy of click (typer._click): its classes, not click's, are duck-typed here.
def _tidy_type(shown: Optional[str], param: Any) -> Optional[str]:
    if shown is None:
        return None
    if getattr(param, "param_type_name", "") == "option" and getattr(param, "is_flag", False):
        return None  # a flag takes no value
    m = re.fullmatch(r"<list\[(.*)\]>", shown)
    if m:
        return f"<{m.group(1)}>..."
    return shown


def tidy_params(command: Any) -> None:
    """Wrap each parameter's help type display once (idempotent), --help's included."""
    get_params = command.get_params
    if not getattr(get_params, "_sacvit_tidy", False):

        def all_params(ctx: Any) -> Any:
            params = get_params(ctx)
            _tidy_each(params)
            return params

        all_params._sacvit_tidy = True  # type: ignore[attr-defined]
        command.get_params = all_params
    _tidy_each(command.params)


def _tidy_each(params: Any) -> None:
    for param in params:
        show = getattr(param, "display_type_rich", None)
        if show is None or getattr(show, "_sacvit_tidy", False):
            continue

        def tidy(ctx: Any, _show: Any = show, _param: Any = param) -> Optional[str]:
            return _tidy_type(_show(ctx=ctx), _param)

        tidy._sacvit_tidy = True  # type: ignore[attr-defined]
        param.display_type_rich = tidy  # type: ignore[method-assign]


# pydantic's constraint wording (typer's coercion) -> the plain words a usage error uses.
_PYDANTIC_WORDS = (
    (re.compile(r"^Input should be greater than or equal to (\S+)$"), r"must be \1 or more"),
    (re.compile(r"^Input should be less than or equal to (\S+)$"), r"must be \1 or less"),
    (re.compile(r"^Input should be greater than (\S+)$"), r"must be more than \1"),
    (re.compile(r"^Input should be less than (\S+)$"), r"must be less than \1"),
    (re.compile(r"^Input should be a valid integer.*$"), "not a whole number"),
    (re.compile(r"^Input should be a valid number.*$"), "not a number"),
)


def plain_message(message: str) -> str:
    """A usage error in plain words: without pydantic's "Value error, " prefix, and its "Input
    should be greater than or equal to 1" as "must be 1 or more"."""
    message = _PYDANTIC_PREFIX.sub("", message)
    for pattern, words in _PYDANTIC_WORDS:
        if pattern.match(message):
            return pattern.sub(words, message)
    return message


class SacvitGroup(TyperGroup):
    def get_params(self, ctx: Any) -> Any:  # the root's own --version / --help
        params = super().get_params(ctx)
        _tidy_each(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy_params(command)
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            exc.message = plain_message(exc.message)
            raise
