"""Tables more than one command prints."""

from __future__ import annotations

from typing import (
    Any,
    Dict,
    List,
    Optional,
)

from sacvit_deploy.cli._console import safe


def parity_table(title: str, rows: List[Dict[str, Any]], low: str = "[red]FAIL[/]") -> Any:  # -> rich Table
    """The agreement table of every parity check (export verification, check --run, build-engine)."""
    from rich.table import Table

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    table = Table(title=safe(title), caption=PARITY_CAPTION)
    columns = [
        "check",
        "images",
        "n",
        "max |Δ|",
        "limit",
        "top-1 agree",
        "exit agree",
        "selection agree",
        "result",
    ]
    for col in columns:
        table.add_column(col, justify="left" if col in ("check", "images", "result") else "right")
    for r in rows:
        limit = r.get("limit")
        table.add_row(
            safe(r["check"]),
            safe(r.get("images", "")),
            safe(r["samples"]),
            f"{r['max_abs_diff']:.2e}",
            "-" if limit is None else f"{limit:.1e}",
            pct(r["top1_agreement"]),
            pct(r["exit_agreement"]),
            pct(r["selection_agreement"]),
            "[green]pass[/]" if r["passed"] else f"{low} {safe(r.get('reason', ''))}",
        )
    return table


PARITY_CAPTION = (
    "limit = atol + rtol * max|reference| per tensor; agreement counts samples not within a hair of "
    "their decision (top-2 margin, |confidence - threshold|)"
)


def file_sizes(files: Dict[str, int]) -> str:
    """ "stage1.onnx 0.4 MB, stage2.onnx 0.4 MB": what export, quantize and build-engine wrote. The
    names are the artifact scheme's (escaped all the same)."""
    return ", ".join(f"{safe(name)} {size / 2**20:.1f} MB" for name, size in files.items())
