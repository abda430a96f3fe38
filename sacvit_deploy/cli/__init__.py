"""The `sacvit-deploy` command line: one module per command, joined here."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import register_app
from sacvit_deploy.cli._console import print_warnings_as_lines
from sacvit_deploy.cli._help import SacvitGroup
from sacvit_deploy.cli.build_engine import build_engine
from sacvit_deploy.cli.calibrate import calibrate
from sacvit_deploy.cli.check import check
from sacvit_deploy.cli.demo import demo
from sacvit_deploy.cli.export import export
from sacvit_deploy.cli.infer import infer
from sacvit_deploy.cli.profile import profile
from sacvit_deploy.cli.quantize import quantize
from sacvit_deploy.cli.serve import serve
from sacvit_deploy.cli.train import train
from sacvit_deploy.cli.triton import triton
from sacvit_deploy.cli.variants import variants
from sacvit_deploy.core.version import __version__

app = typer.Typer(
    name="sacvit-deploy",
    help="Deploy SAC-ViT / LF-ViT / CF-ViT early-exit vision transformers: export, build, infer, profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=SacvitGroup,  # every command's help and usage errors tidied in one place
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sacvit-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Deploy SAC-ViT / LF-ViT / CF-ViT early-exit vision transformers: export, build, infer, profile."""


app.command("demo")(demo)
app.command("export")(export)
app.command("check")(check)
app.command("quantize")(quantize)
app.command("build-engine")(build_engine)
app.command("infer")(infer)
app.command("variants")(variants)
app.command("profile")(profile)
app.command("calibrate")(calibrate)
app.command("triton")(triton)
app.command("serve")(serve)
app.command("train")(train)
register_app(app)  # lets the demo run its steps as command lines


def main() -> None:
    print_warnings_as_lines()
    app()
