"""`sacvit-deploy check`: will the exported graphs parse on TensorRT 8.5 / 8.6 / 10 / 11?

A static lint of the ONNX graphs against each parser's operator table (no TensorRT needed). Exit
code 0: every graph parses on every version asked (warnings allowed); 2: some will not; 1: a user
error (missing folder, tampered graph); 2 also for a bad option (click's usage-error code).

Without ``--trt`` every family is checked, but only the export's own target (``export
--target-trt``, default 10) and the families after it decide the exit code: an export made for
TensorRT 10 keeps LayerNormalization native, which 8.5's parser lacks by design, so 8.5's verdict is
a note that says how to export for it. Naming a family with ``--trt`` makes its verdict count.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from sacvit_deploy.cli._command import handle_errors
from sacvit_deploy.cli._console import note, out, printable, safe
from sacvit_deploy.cli._paths import ARTIFACTS, OUTPUT_FILE, write_json
from sacvit_deploy.cli._tables import parity_table
from sacvit_deploy.core.trt_families import TRT_FAMILY_NAMES


class ParityBackend(str, Enum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


def _parse_trt(values: Optional[List[str]]) -> List[str]:
    """Option callback: ``--trt 8.5 --trt 10`` and ``--trt 8.5,10`` both work, typos stop the parse."""
    choices = list(TRT_FAMILY_NAMES)
    picked: List[str] = []
    for value in values or []:
        for part in (p.strip() for p in value.split(",")):
            if part not in choices:
                raise typer.BadParameter(f"{part!r} is not one of {', '.join(choices)}")
            if part not in picked:
                picked.append(part)
    return picked


@handle_errors
def check(
    folder: Annotated[
        Path,
        typer.Argument(help="Export folder with manifest.json and the ONNX graphs."),
        ARTIFACTS,
    ] = Path("export"),
    trt: Annotated[
        Optional[List[str]],
        typer.Option(
            "--trt",
            metavar="<" + "|".join(TRT_FAMILY_NAMES) + ">",  # the style of every other choice
            callback=_parse_trt,
            help="TensorRT version(s) to check: repeat the option or give a comma list. Default: all four, "
            "where only the export's target and later ones decide the exit code.",
        ),
    ] = None,
    json_file: Annotated[
        Optional[Path],
        typer.Option("--json", help="Also write every problem to this JSON file."),
        OUTPUT_FILE,
    ] = None,
    run: Annotated[
        bool,
        typer.Option(
            "--run/--no-run",
            help="Also run the graphs: ONNX Runtime vs the folder's model.safetensors on random and real "
            "images, through the same comparator as export (exit code 2 on a mismatch).",
        ),
    ] = False,
    backend: Annotated[
        ParityBackend,
        typer.Option(
            "--backend",
            help="With --run: the runtime checked. openvino: OpenVINO vs the weights (float, ONNX Runtime's "
            "limits) or vs ONNX Runtime on the same int8 graphs (quantize's decision agreement).",
        ),
    ] = ParityBackend.onnxruntime,
) -> None:
    """Check the exported graphs against TensorRT's ONNX parser (8.5, 8.6, 10, 11) without TensorRT."""
    from sacvit_deploy.core.manifest import Manifest
    from sacvit_deploy.export.trt_compat import check_folder_versions, group_problems

    versions = trt or list(TRT_FAMILY_NAMES)
    manifest = Manifest.load(folder)
    results = check_folder_versions(folder, versions)
    target = manifest.exporter.target_trt if manifest.exporter else None
    # Without --trt, a family older than the export's target is informative only: the export chose
    # not to support it (8.5's parser has no LayerNormalization; --target-trt 8.5 decomposes it).
    informative = set() if trt or target is None else set(TRT_FAMILY_NAMES[: TRT_FAMILY_NAMES.index(target)])
    failed = False
    not_targeted: List[str] = []
    records = []
    for version, by_role in results.items():
        for role, problems in by_role.items():
            graph = manifest.graphs[role].file
            for group in group_problems(problems):  # one line per distinct problem, with a node count
                out.print(printable(group.line(graph)), markup=False, highlight=False)
            errors = sum(p.is_error for p in problems)
            warnings = len(problems) - errors
            if errors and version in informative:
                if version not in not_targeted:
                    not_targeted.append(version)
                verdict = (
                    f"{graph}: will NOT parse on TensorRT {version} ({_count(errors, 'error')}); "
                    f"not a target of this export (made for TensorRT {target})"
                )
            elif errors:
                failed = True
                verdict = f"{graph}: will NOT parse on TensorRT {version} ({_count(errors, 'error')})"
            else:
                extra = f" ({_count(warnings, 'warning')})" if warnings else ""
                verdict = f"{graph}: parses on TensorRT {version}{extra}"
            out.print(printable(verdict), markup=False, highlight=False)
            records.append(
                {
                    "graph": graph,
                    "role": role,
                    "trt": version,
                    "parses": not errors,
                    "problems": [p.to_dict() for p in problems],
                }
            )
    if json_file is not None:
        write_json(json_file, {"folder": str(folder), "results": records})
    note(
        f"checked {len(manifest.graphs)} graph(s) on TensorRT {', '.join(versions)}; "
        "a static check: still compare every engine with ONNX Runtime"
        + ("; every problem per node: --json FILE" if json_file is None else "")
    )
    for version in not_targeted:
        note(
            f"TensorRT {version} is older than this export's target ({safe(target)}), so its verdict does not "
            f"set the exit code: for {version}, export with --target-trt {version}; name it "
            f"(--trt {version}) to make it count"
        )
    counted = [v for v in results if v not in not_targeted]
    summary = (
        f"parser check: {'some graph will NOT parse' if failed else 'every graph parses'} on TensorRT "
        f"{', '.join(counted)}"
    )
    if run and backend == ParityBackend.openvino:
        parity_failed = _run_openvino_parity(folder, manifest)
    else:
        parity_failed = _run_parity(folder, manifest) if run else False
    if run:
        summary += "; parity: " + ("a row FAILED" if parity_failed else "every row passes")
    bad = failed or parity_failed
    out.print(
        f"verdict: {'FAIL' if bad else 'OK'} ({summary}; exit code {2 if bad else 0})",
        markup=False,
        highlight=False,
    )
    if bad:
        raise typer.Exit(2)


def _run_parity(folder: Path, manifest) -> bool:
    """Print the parity table of ONNX Runtime vs PyTorch; True when a row failed."""
    from sacvit_deploy.export.verify import check_parity

    report = check_parity(folder, manifest, _sample_images(manifest))
    title = (
        f"ONNX Runtime (CPU) vs PyTorch (model.safetensors), atol {report['atol']:.0e} + "
        f"rtol {report['rtol']:.0e} * max|reference|"
    )
    out.print(parity_table(title, report["rows"]))
    return not report["passed"]


def _run_openvino_parity(folder: Path, manifest) -> bool:
    """Print the parity table of OpenVINO vs its reference; True when a row failed."""
    from sacvit_deploy.quantize.openvino_parity import check_openvino_parity

    report = check_openvino_parity(folder, manifest, _sample_images(manifest))
    if report["int8"]:
        rule = f"int8: decisions agree on >= {100 * report['min_agreement']:.0f}% (quantize's rule)"
    else:
        rule = f"atol {report['atol']:.0e} + rtol {report['rtol']:.0e} * max|reference|"
    out.print(parity_table(f"{report['candidate']} vs {report['reference']}, {rule}", report["rows"]))
    return not report["passed"]


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _sample_images(manifest):  # -> numpy batch or None
    """The bundled sample images, preprocessed as the manifest says (the parity checks' real images)."""
    from sacvit_deploy.runtime.image_folder import verification_images

    return verification_images(None, manifest.model.preprocess, log=lambda m: note(f"[yellow]{safe(m)}[/]"))
