"""PNG plots for `profile` and `calibrate` (matplotlib, the optional `plot` extra).

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend
switch, no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.extras import install_hint, missing_module_message

INSTALL_HINT = install_hint("plot")


def require_matplotlib() -> None:
    """Fail early, in one line, when --plot is asked without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SacvitError(missing_module_message("matplotlib", exc, "--plot")) from None


def _figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    try:
        fig.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise SacvitError(
            f"{path}: cannot write the plot ({exc.strerror or exc}); pick a writable path"
        ) from None
    return path


def plot_profile(report: Dict[str, Any], path: Path) -> Path:
    """Left: end-to-end / ideal / baseline latency per batch size (median, p90 bar).
    Right: MEDIAN time per image (the statistic of the text report), the pipeline's bar split into
    stage 1, gate and stage 2 by each part's share of the summed mean times (medians of the parts do
    not add up: at batch 1 the median stage-2 time is 0 when most images exit), baseline beside it."""
    batches = report["batches"]
    sizes = [b["batch"] for b in batches]
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2)

    for row, label, style in (
        ("end_to_end", "pipeline, end to end", "o-"),
        ("ideal", "ideal (stage 1 + 2 back to back)", "s--"),
        ("baseline", "baseline DeiT", "^-"),
    ):
        if not all(row in b["latency"] for b in batches):
            continue
        med = [b["latency"][row]["median_ms"] for b in batches]
        p90 = [b["latency"][row]["p90_ms"] for b in batches]
        left.errorbar(
            sizes,
            med,
            yerr=[[0] * len(med), [max(q - m, 0) for m, q in zip(med, p90)]],
            fmt=style,
            capsize=3,
            label=label,
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(sizes, [str(s) for s in sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("latency per batch (ms), median, bar to p90")
    left.set_title("latency")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    xs = list(range(len(sizes)))
    bottom = [0.0] * len(sizes)
    parts = ("stage1", "gate", "stage2")
    for row, label in zip(parts, ("stage 1", "gate + compaction", "stage 2")):
        per_image = []
        for b in batches:
            total = sum(b["latency"][p]["mean_ms"] for p in parts) or 1.0
            share = b["latency"][row]["mean_ms"] / total
            per_image.append(share * b["latency"]["pipeline_staged"]["median_ms"] / b["batch"])
        right.bar([x - 0.2 for x in xs], per_image, width=0.4, bottom=bottom, label=label)
        bottom = [a + c for a, c in zip(bottom, per_image)]
    if all("baseline" in b["latency"] for b in batches):
        right.bar(
            [x + 0.2 for x in xs],
            [b["latency"]["baseline"]["median_ms"] / b["batch"] for b in batches],
            width=0.4,
            color="0.6",
            label="baseline DeiT",
        )
    right.set_xticks(xs, [f"{s}\n{100 * b['exit_rate']:.0f}% exit" for s, b in zip(sizes, batches)])
    right.set_xlabel("batch size")
    right.set_ylabel("median ms per image (split by mean shares)")
    right.set_title("stage breakdown (pipeline synced per stage)")
    right.legend(fontsize=8)
    env = report["environment"]
    precision = report["model"].get("precision", "float32")
    fig.suptitle(
        f"{report['model']['variant']} ({precision}, {report['model']['artifacts']}): {env['backend_choice']}",
        fontsize=9,
    )
    return _save(fig, path)


def plot_calibration(
    curve: List[Dict[str, float]], chosen: Optional[Dict[str, float]], ref: Dict[str, float], path: Path
) -> Path:
    """Left: accuracy vs mean GFLOPs per image (the budgeted-classification curve).
    Right: accuracy and exit rate vs threshold."""
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2)
    g = [p["gflops"] for p in curve]
    acc = [100 * p["accuracy"] for p in curve]
    left.plot(g, acc, ".-", markersize=3, label="early exit, threshold sweep")
    left.axhline(100 * ref["stage2_accuracy"], color="0.5", linestyle=":", label="stage 2 for every image")
    left.axvline(ref["baseline_gflops"], color="0.3", linestyle="--", label="baseline DeiT GFLOPs")
    if chosen:
        left.plot(
            [chosen["gflops"]],
            [100 * chosen["accuracy"]],
            "r*",
            markersize=12,
            label=f"chosen {chosen['threshold']:g}",
        )
    left.set_xlabel("mean GFLOPs per image")
    left.set_ylabel("top-1 accuracy (%)")
    left.set_title("accuracy vs cost")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)

    th = [p["threshold"] for p in curve]
    right.plot(th, acc, "-", label="accuracy (%)")
    right.plot(th, [100 * p["exit_rate"] for p in curve], "-", label="exit rate (%)")
    if chosen:
        right.axvline(chosen["threshold"], color="r", linestyle=":", label="chosen")
    right.set_xlabel("exit threshold")
    right.set_ylabel("%")
    right.set_title("accuracy and exit rate vs threshold")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    return _save(fig, path)
