"""`sacvit-deploy variants`: the named variants with their token counts and GFLOPs."""

from __future__ import annotations

import typer
from rich.table import Table
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import out
from sacvit_deploy.core.formats import CHECKPOINT_FORMATS
from sacvit_deploy.model.config import VARIANTS, make_config
from sacvit_deploy.model.flops import FlopsReport, format_gflops


@handle_errors
def variants(
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help=f"Checkpoint format whose stage-2 rules to show (default: all of {', '.join(f.name for f in CHECKPOINT_FORMATS.values() if f.variants_table)}).",
        ),
    ] = "all",
) -> None:
    """List the model variants: grids, stage-2 token counts and GFLOPs (multiply-accumulates)."""
    own_rules = [f.name for f in CHECKPOINT_FORMATS.values() if f.variants_table]
    formats = own_rules if fmt == "all" else [fmt]
    table = Table(title="SAC-ViT variants (GFLOPs = G multiply-accumulates per image)")
    for col in (
        "variant",
        "format",
        "stage-1 grid",
        "window",
        "k",
        "stage-2 tokens",
        "baseline",
        "stage 1",
        "stage 2",
    ):
        table.add_column(col, justify="right" if col not in ("variant", "format") else "left")
    for name in sorted(VARIANTS):
        for f in formats:
            cfg = make_config(name, f)
            r = FlopsReport.of(cfg)
            window = f"{cfg.region_size}x{cfg.region_size}" if cfg.selection == "window" else "global"
            table.add_row(
                name,
                f"{f} ({cfg.attention})",
                f"{cfg.coarse_grid}x{cfg.coarse_grid}",
                window,
                str(cfg.num_targets),
                str(cfg.stage2_tokens),
                format_gflops(r.baseline),
                format_gflops(r.stage1),
                format_gflops(r.stage2),
            )
    out.print(table)
    out.print(
        "GFLOPs as this package's graphs compute them (stage 2 embeds only its target patches); LF-ViT's "
        "papers count all patches: +0.06 G for DeiT-S stage 2 (2.70). docs/spec.md, section FLOPs.",
        highlight=False,
    )
