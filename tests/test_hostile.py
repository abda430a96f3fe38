"""Hostile and careless input, through the real CLI in subprocesses.

A generated corpus: each case builds its own folder (a copy of one tiny export, images, checkpoints,
tampered files), runs ``python -m sacvit_deploy ...`` there, and asserts the exit code, a one-line
error naming the file, no traceback, no raw control character on the terminal, the rows kept, and
that no file outside the case's declared outputs changed (sha256 of the whole case folder before and
after). Cases run in parallel subprocesses, once per session. Classes: data loss, forgery, unsafe
reads, tracebacks, silent acceptance.

Plus a seeded mutation fuzz of the image decoder (in-process): only per-file errors may escape.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_tiny

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
CLI = [sys.executable, "-m", "sacvit_deploy"]
TIMEOUT_S = 240


# ---- the shared base: one tiny export, built once ----------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from sacvit_deploy.export.onnx_export import ExportOptions, export_artifacts
    from sacvit_deploy.model import save_checkpoint

    root = tmp_path_factory.mktemp("hostile-base")
    model = make_tiny("sacvit")
    save_checkpoint(model, root / "tiny.safetensors")
    export_artifacts(model, root / "export", ExportOptions(baseline=True), "sacvit")
    return root


def _png(path: Path, size=(40, 30), colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_chunk_before_idat(path: Path, chunk: bytes) -> Path:
    _png(path)
    data = path.read_bytes()
    at = data.index(b"IDAT") - 4
    path.write_bytes(data[:at] + chunk + data[at:])
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    return path


def _edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def _rehash(folder: Path, role: str) -> None:
    from sacvit_deploy.core.manifest import sha256_file

    def edit(d):
        entry = d["graphs"][role]
        entry["sha256"] = sha256_file(folder / entry["file"])
        entry["size"] = (folder / entry["file"]).stat().st_size

    _edit_manifest(folder, edit)


def _external(tensor, location: str) -> None:
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _sparse_outside(folder: Path, where: str) -> None:
    """stage1.onnx gains a sparse tensor whose values live in ../secret.bin (sha re-recorded)."""
    import onnx
    from onnx import helper, numpy_helper

    path = folder / "stage1.onnx"
    model = onnx.load(str(path))
    values = numpy_helper.from_array(np.zeros(1, np.float32), name="sparse_values")
    _external(values, "../secret.bin")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), name="sparse_indices")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    if where == "initializer":
        model.graph.sparse_initializer.append(sparse)
    else:
        model.graph.node.append(helper.make_node("Constant", [], ["sparse_const"], sparse_value=sparse))
    path.write_bytes(model.SerializeToString())
    _rehash(folder, "stage1")


def _dense_outside(folder: Path) -> None:
    import onnx

    path = folder / "stage1.onnx"
    model = onnx.load(str(path))
    _external(model.graph.initializer[0], "/etc/hostname")
    path.write_bytes(model.SerializeToString())
    _rehash(folder, "stage1")


def _checkpoint_with(path: Path, tweak: Callable[[dict, dict], None], base: Path) -> Path:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(base / "tiny.safetensors"))
    from safetensors import safe_open

    with safe_open(str(base / "tiny.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    tweak(sd, cfg)
    meta["config"] = json.dumps(cfg)
    save_file(sd, str(path), metadata=meta)
    return path


# ---- cases -------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    kind: str  # data loss | forgery | unsafe read | traceback | silent acceptance
    setup: Callable[[Path, Path], list[str]]  # (case folder, base) -> argv
    code: int | tuple[int, ...]
    message: str | None = None  # regex the error line (or stderr) must match
    names: str | None = None  # what the one error line must name (a file or option)
    outputs: tuple[str, ...] = ()  # paths (relative to the case folder) allowed to change
    rows: tuple[str, int] | None = None  # (output file, whole JSON/CSV rows expected)
    raw_stdout: bool = False  # stdout is data (CSV), not a terminal view
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None
    needs_user: bool = False  # permission cases: meaningless as root
    limit_fsize: int | None = None  # RLIMIT_FSIZE in bytes: a disk that fills up


def infer(*extra: str) -> list[str]:
    return ["infer", *extra, "--artifacts", "export", "--backend", "onnxruntime"]


def good(d: Path) -> str:
    (d / "imgs").mkdir(exist_ok=True)
    _png(d / "imgs" / "good.png")
    return "imgs/good.png"


def _jsonl_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "a cut row"
    return [json.loads(line) for line in text.splitlines()]


def _cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # ---- data loss: outputs never inputs, publishing never deletes what it did not write -------------
    def output_is_input(d, b):
        return infer(good(d), "--output", "imgs/good.png")

    add(Case("output-is-an-input", "data loss", output_is_input, 1, "is one of the inputs", "imgs/good.png"))

    def output_hardlink(d, b):
        g = good(d)
        os.link(d / g, d / "link.png")
        return infer(g, "--output", "link.png")

    add(
        Case("output-hard-link-of-input", "data loss", output_hardlink, 1, "is one of the inputs", "link.png")
    )

    def output_symlink(d, b):
        g = good(d)
        (d / "alias.jsonl").symlink_to(d / g)
        return infer(g, "--output", "alias.jsonl")

    add(
        Case("output-symlink-to-input", "data loss", output_symlink, 1, "is one of the inputs", "alias.jsonl")
    )

    def output_manifest(d, b):
        return infer(good(d), "--output", "export/manifest.json")

    add(
        Case(
            "output-is-the-manifest",
            "data loss",
            output_manifest,
            1,
            "a file of the artifact folder",
            "manifest.json",
        )
    )

    def output_graph(d, b):
        return infer(good(d), "--output", "export/stage2.onnx", "--format", "csv")

    add(
        Case(
            "output-is-a-graph", "data loss", output_graph, 1, "a file of the artifact folder", "stage2.onnx"
        )
    )

    def output_labels(d, b):
        (d / "labels.txt").write_text("\n".join(str(i) for i in range(10)))
        return infer(good(d), "--labels", "labels.txt", "--output", "labels.txt")

    add(
        Case("output-is-the-labels-file", "data loss", output_labels, 1, "is one of the inputs", "labels.txt")
    )

    def output_folder(d, b):
        return infer(good(d), "--output", "imgs")

    add(Case("output-is-a-folder", "data loss", output_folder, 1, "is a folder", "imgs"))

    def output_missing_folder(d, b):
        return infer(good(d), "--output", "nowhere/out.jsonl")

    add(Case("output-in-missing-folder", "traceback", output_missing_folder, 1, "does not exist", "nowhere"))

    def output_unwritable(d, b):
        (d / "ro").mkdir()
        (d / "ro").chmod(0o555)
        return infer(good(d), "--output", "ro/out.jsonl")

    add(
        Case(
            "output-unwritable",
            "traceback",
            output_unwritable,
            1,
            "cannot create files",
            "ro",
            needs_user=True,
        )
    )

    def profile_json_manifest(d, b):
        return [
            "profile",
            "--artifacts",
            "export",
            "--backend",
            "onnxruntime",
            "--json",
            "export/manifest.json",
        ]

    add(
        Case(
            "profile-json-into-artifacts",
            "data loss",
            profile_json_manifest,
            1,
            "a file of the artifact folder",
            "manifest.json",
        )
    )

    def check_json_graph(d, b):
        return ["check", "export", "--json", "export/stage1.onnx"]

    add(
        Case(
            "check-json-onto-graph",
            "data loss",
            check_json_graph,
            1,
            "a file of the artifact folder",
            "stage1.onnx",
        )
    )

    def calibrate_csv_input(d, b):
        for c in ("0", "1"):
            (d / "cal" / c).mkdir(parents=True)
            _png(d / "cal" / c / "x.png")
        return [
            "calibrate",
            "--images",
            "cal",
            "--folder-labels",
            "index",
            "--artifacts",
            "export",
            "--backend",
            "onnxruntime",
            "--csv",
            "cal/0/x.png",
        ]

    add(
        Case("calibrate-csv-onto-input", "data loss", calibrate_csv_input, 1, "is one of the inputs", "x.png")
    )

    def export_foreign_manifest(d, b):
        (d / "thesis.tex").write_text("years of work")

        def edit(m):
            m["graphs"]["stage1"]["external_data"] = "thesis.tex"
            m["graphs"]["stage1"]["external_sha256"] = hashlib.sha256(b"years of work").hexdigest()

        shutil.copy(d / "export" / "manifest.json", d / "manifest.json")
        _edit_manifest(d, edit)
        return ["export", str(b / "tiny.safetensors"), "--out", ".", "--no-verify"]

    add(
        Case(
            "export-tampered-manifest-claims-user-file",
            "data loss",
            export_foreign_manifest,
            1,
            "holds other files",
            "thesis.tex",
        )
    )

    def export_replaced_graph(d, b):
        (d / "export" / "stage2.onnx").write_text("my own notes, not a graph")
        return ["export", str(b / "tiny.safetensors"), "--out", "export", "--no-verify"]

    add(
        Case(
            "export-over-a-changed-artifact",
            "data loss",
            export_replaced_graph,
            1,
            "does not match the sha256",
            "stage2.onnx",
        )
    )

    def export_owned_folder(d, b):
        (d / "export" / "model.safetensors").unlink()
        (d / "export" / "model.safetensors").mkdir()
        (d / "export" / "model.safetensors" / "keep.txt").write_text("mine")
        return ["export", str(b / "tiny.safetensors"), "--out", "export", "--no-verify"]

    add(
        Case(
            "export-owned-name-is-a-folder",
            "data loss",
            export_owned_folder,
            1,
            "not a regular file",
            "model.safetensors",
        )
    )

    def export_into_user_folder(d, b):
        (d / "docs").mkdir()
        (d / "docs" / "notes.txt").write_text("notes")
        return ["export", str(b / "tiny.safetensors"), "--out", "docs", "--no-verify"]

    add(
        Case(
            "export-into-a-user-folder", "data loss", export_into_user_folder, 1, "holds other files", "docs"
        )
    )

    def export_onto_file(d, b):
        (d / "notes.txt").write_text("notes")
        return ["export", str(b / "tiny.safetensors"), "--out", "notes.txt", "--no-verify"]

    add(Case("export-out-is-a-file", "data loss", export_onto_file, 1, "not a folder", "notes.txt"))

    def export_reexport_ok(d, b):
        return ["export", str(b / "tiny.safetensors"), "--out", "export", "--no-verify"]

    add(Case("export-over-its-own-output", "silent acceptance", export_reexport_ok, 0, outputs=("export",)))

    def triton_user_folder(d, b):
        (d / "repo" / "photos").mkdir(parents=True)
        (d / "repo" / "photos" / "holiday.jpg").write_text("precious")
        index = {
            "schema": "sacvit-deploy/triton-repository",
            "schema_version": 1,
            "name": "photos",
            "backend": "onnxruntime",
            "models": {"bls": "photos", "stage1": "photos_stage1", "stage2": "photos_stage2"},
            "files": {},
        }
        (d / "repo" / "sacvit_triton.json").write_text(json.dumps(index))
        return ["triton", "--artifacts", "export", "--out", "repo"]

    add(
        Case("triton-index-claims-user-folder", "data loss", triton_user_folder, 1, "did not write", "photos")
    )

    def triton_foreign_name(d, b):
        (d / "repo" / "thesis").mkdir(parents=True)
        (d / "repo" / "thesis" / "ch1.tex").write_text("chapter")
        index = {
            "schema": "sacvit-deploy/triton-repository",
            "schema_version": 1,
            "name": "sacvit",
            "backend": "onnxruntime",
            "models": {"bls": "thesis", "stage1": "sacvit_stage1", "stage2": "sacvit_stage2"},
            "files": {"thesis/ch1.tex": hashlib.sha256(b"chapter").hexdigest()},
        }
        (d / "repo" / "sacvit_triton.json").write_text(json.dumps(index))
        return ["triton", "--artifacts", "export", "--out", "repo"]

    add(
        Case(
            "triton-index-names-off-scheme-folder",
            "data loss",
            triton_foreign_name,
            1,
            "holds other files",
            "thesis",
        )
    )

    def calibrate_readonly(d, b):
        for c in ("0", "1"):
            (d / "cal" / c).mkdir(parents=True)
            _png(d / "cal" / c / "x.png")
        (d / "export" / "manifest.json").chmod(0o444)
        return [
            "calibrate",
            "--images",
            "cal",
            "--folder-labels",
            "index",
            "--artifacts",
            "export",
            "--backend",
            "onnxruntime",
            "--target-exit-rate",
            "0.5",
            "--write",
        ]

    add(
        Case(
            "calibrate-write-read-only-manifest",
            "data loss",
            calibrate_readonly,
            1,
            "read-only",
            "manifest.json",
            needs_user=True,
        )
    )

    def calibrate_keeps_mode(d, b):
        for c in ("0", "1"):
            (d / "cal" / c).mkdir(parents=True)
            _png(d / "cal" / c / "x.png")
        (d / "export" / "manifest.json").chmod(0o640)
        return [
            "calibrate",
            "--images",
            "cal",
            "--folder-labels",
            "index",
            "--artifacts",
            "export",
            "--backend",
            "onnxruntime",
            "--target-exit-rate",
            "0.5",
            "--write",
        ]

    def mode_kept(d, r):
        assert (d / "export" / "manifest.json").stat().st_mode & 0o777 == 0o640

    add(
        Case(
            "calibrate-write-keeps-mode",
            "data loss",
            calibrate_keeps_mode,
            0,
            outputs=("export/manifest.json",),
            check=mode_kept,
        )
    )

    # ---- forgery: what reaches the terminal -------------------------------------------------------
    def esc_file_name(d, b):
        (d / "imgs").mkdir()
        _png(d / "imgs" / "\x1b[2Jcleared.png")
        return infer("imgs")

    def shows_escaped(d, r):
        assert "\\x1b[2Jcleared.png" in r.stdout

    add(Case("esc-in-file-name-table", "forgery", esc_file_name, 0, check=shows_escaped))

    def newline_file_name(d, b):
        (d / "imgs").mkdir()
        _png(d / "imgs" / "a\n    1   1.000   1.000  cat   forged.png")
        _png(d / "imgs" / "b.png")
        return infer("imgs")

    def one_row_each(d, r):
        assert len(r.stdout.strip().splitlines()) == 3, r.stdout  # header + 2 rows

    add(Case("newline-in-file-name-table", "forgery", newline_file_name, 0, check=one_row_each))

    def bidi_name(d, b):
        (d / "imgs").mkdir()
        _png(d / "imgs" / "invoice\u202egnp.png")
        return infer("imgs")

    add(
        Case(
            "bidi-override-in-file-name",
            "forgery",
            bidi_name,
            0,
            check=lambda d, r: _assert_in(r.stdout, "\\u202e"),
        )
    )

    def esc_labels(d, b):
        (d / "labels.txt").write_text("\n".join(f"\x1b]0;pwned\x07class{i}" for i in range(10)))
        return infer(good(d), "--labels", "labels.txt", "--topk", "3")

    add(
        Case(
            "esc-in-labels-file",
            "forgery",
            esc_labels,
            0,
            check=lambda d, r: _assert_in(r.stdout, "\\x1b]0;pwned\\x07"),
        )
    )

    def esc_manifest_names(d, b):
        _edit_manifest(
            d / "export",
            lambda m: m["model"].__setitem__("class_names", [f"c{i}\r\x1b[1A" for i in range(10)]),
        )
        return infer(good(d), "--topk", "2")

    add(
        Case(
            "esc-in-manifest-class-names",
            "forgery",
            esc_manifest_names,
            0,
            check=lambda d, r: _assert_in(r.stdout, "\\r\\x1b[1A"),
        )
    )

    def esc_bad_image(d, b):
        (d / "imgs").mkdir()
        (d / "imgs" / "\x1b[31mred.png").write_text("not an image")
        _png(d / "imgs" / "ok.png")
        return infer("imgs")

    add(Case("esc-in-failing-file-name", "forgery", esc_bad_image, 2, "skipped", "\\x1b[31mred.png"))

    def markup_name(d, b):
        return infer("[bold]missing[/bold].png")

    add(
        Case(
            "rich-markup-in-missing-name",
            "forgery",
            markup_name,
            1,
            "glob matched no files|no such file",
            "[bold]missing[/bold].png",
        )
    )

    def markup_image(d, b):
        (d / "imgs").mkdir()
        _png(d / "imgs" / "[red]x[bold].png")
        return infer("imgs")

    add(
        Case(
            "rich-markup-in-file-name",
            "forgery",
            markup_image,
            0,
            check=lambda d, r: _assert_in(r.stdout, "[red]x[bold].png"),
        )
    )

    def emoji_code_name(d, b):
        (d / "imgs").mkdir()
        (d / "imgs" / ":warning:.png").write_text("x")
        return infer("imgs")

    add(Case("emoji-code-in-failing-name", "forgery", emoji_code_name, 2, "skipped", ":warning:.png"))

    def jsonl_stdout_esc(d, b):
        (d / "imgs").mkdir()
        _png(d / "imgs" / "\x1b[2J.png")
        return infer("imgs", "--format", "jsonl")

    add(
        Case(
            "esc-in-name-jsonl-stdout",
            "forgery",
            jsonl_stdout_esc,
            0,
            check=lambda d, r: _assert_in(r.stdout, "\\u001b[2J"),
        )
    )

    # ---- unsafe reads and allocations ---------------------------------------------------------------
    def sparse_init(d, b):
        (d / "secret.bin").write_bytes(b"\x00" * 16)
        _sparse_outside(d / "export", "initializer")
        return ["check", "export"]

    add(
        Case(
            "sparse-initializer-external-outside",
            "unsafe read",
            sparse_init,
            1,
            "outside the graph's folder",
            "stage1.onnx",
        )
    )

    def sparse_const(d, b):
        (d / "secret.bin").write_bytes(b"\x00" * 16)
        _sparse_outside(d / "export", "constant")
        return ["check", "export"]

    add(
        Case(
            "sparse-constant-external-outside",
            "unsafe read",
            sparse_const,
            1,
            "outside the graph's folder",
            "stage1.onnx",
        )
    )

    def sparse_infer(d, b):
        (d / "secret.bin").write_bytes(b"\x00" * 16)
        _sparse_outside(d / "export", "initializer")
        return infer(good(d))

    add(
        Case(
            "sparse-external-outside-infer",
            "unsafe read",
            sparse_infer,
            1,
            "outside the graph's folder",
            "stage1.onnx",
        )
    )

    def sparse_triton(d, b):
        (d / "secret.bin").write_bytes(b"\x00" * 16)
        _sparse_outside(d / "export", "constant")
        return ["triton", "--artifacts", "export", "--out", "repo"]

    add(
        Case(
            "sparse-external-outside-triton",
            "unsafe read",
            sparse_triton,
            1,
            "outside the graph's folder",
            "stage1.onnx",
        )
    )

    def dense_outside(d, b):
        _dense_outside(d / "export")
        return infer(good(d))

    add(
        Case(
            "dense-external-absolute-path",
            "unsafe read",
            dense_outside,
            1,
            "outside the graph's folder",
            "stage1.onnx",
        )
    )

    def huge_classes(d, b):
        _checkpoint_with(
            d / "huge.safetensors", lambda sd, cfg: cfg.__setitem__("num_classes", 62_500_000), b
        )
        return ["export", "huge.safetensors", "--out", "out", "--no-verify"]

    add(
        Case(
            "checkpoint-config-62M-classes",
            "unsafe read",
            huge_classes,
            1,
            "num_classes 62500000",
            "huge.safetensors",
        )
    )

    def deep_config(d, b):
        _checkpoint_with(d / "deep.safetensors", lambda sd, cfg: cfg.__setitem__("depth", 1_000_000), b)
        return ["export", "deep.safetensors", "--out", "out", "--no-verify"]

    add(
        Case(
            "checkpoint-config-million-blocks",
            "unsafe read",
            deep_config,
            1,
            "depth|score_layers",
            "deep.safetensors",
        )
    )

    def profile_huge_batch(d, b):
        return ["profile", "--artifacts", "export", "--backend", "onnxruntime", "--batch-sizes", "1000000"]

    add(Case("profile-batch-1e6", "unsafe read", profile_huge_batch, 1, "from 1 to 1024", "--batch-sizes"))

    def infer_huge_batch(d, b):
        return infer(good(d), "--batch-size", "1000000")

    add(Case("infer-batch-1e6", "unsafe read", infer_huge_batch, 1, "from 1 to 1024", "--batch-size"))

    def calibrate_huge_batch(d, b):
        return ["calibrate", "--images", "x", "--artifacts", "export", "--batch-size", "99999999"]

    add(Case("calibrate-batch-1e8", "unsafe read", calibrate_huge_batch, 1, "from 1 to 1024", "--batch-size"))

    def topk_huge(d, b):
        return infer(good(d), "--topk", "1000000", "--format", "jsonl", "--output", "out.jsonl")

    def ten_classes(d, r):
        rows = _jsonl_rows(d / "out.jsonl")
        assert len(rows[0]["top"]) == 10
        assert (d / "out.jsonl").stat().st_size < 4000

    add(
        Case(
            "topk-1e6-capped",
            "unsafe read",
            topk_huge,
            0,
            outputs=("out.jsonl",),
            rows=("out.jsonl", 1),
            check=ten_classes,
        )
    )

    def topk_csv(d, b):
        return infer(good(d), "--topk", "1000000", "--format", "csv", "--output", "out.csv")

    def csv_columns(d, r):
        header = (d / "out.csv").read_text().splitlines()[0].split(",")
        assert len(header) == 3 + 3 * 10 + 1

    add(Case("topk-1e6-csv-columns", "unsafe read", topk_csv, 0, outputs=("out.csv",), check=csv_columns))

    def pixel_bomb(d, b):
        (d / "imgs").mkdir()
        _png_header_only(d / "imgs" / "bomb.png", 20000, 20000)
        _png(d / "imgs" / "ok.png")
        return infer("imgs", "--format", "jsonl", "--output", "out.jsonl")

    add(
        Case(
            "png-400-megapixel-header",
            "unsafe read",
            pixel_bomb,
            2,
            "decompression bomb",
            "bomb.png",
            outputs=("out.jsonl",),
            rows=("out.jsonl", 2),
        )
    )

    def fifo_checkpoint(d, b):
        os.mkfifo(d / "ckpt.pth")
        return ["export", "ckpt.pth", "--out", "out"]

    add(Case("checkpoint-is-a-fifo", "unsafe read", fifo_checkpoint, 1, "FIFO", "ckpt.pth"))

    def loop_checkpoint(d, b):
        (d / "ckpt.pth").symlink_to("ckpt.pth")
        return ["export", "ckpt.pth", "--out", "out"]

    add(Case("checkpoint-symlink-loop", "unsafe read", loop_checkpoint, 1, "symbolic link loop", "ckpt.pth"))

    def fifo_image(d, b):
        (d / "imgs").mkdir()
        os.mkfifo(d / "imgs" / "pipe.png")
        _png(d / "imgs" / "ok.png")
        return infer("imgs/pipe.png", "imgs/ok.png", "--format", "jsonl", "--output", "out.jsonl")

    add(
        Case(
            "image-is-a-fifo",
            "unsafe read",
            fifo_image,
            2,
            "FIFO",
            "pipe.png",
            outputs=("out.jsonl",),
            rows=("out.jsonl", 2),
        )
    )

    def loop_image(d, b):
        (d / "loop.png").symlink_to("loop.png")
        return infer("loop.png")

    add(Case("image-symlink-loop", "unsafe read", loop_image, 1, "symbolic link loop", "loop.png"))

    def broken_link_image(d, b):
        (d / "gone.png").symlink_to("nowhere.png")
        return infer("gone.png")

    add(Case("image-broken-symlink", "unsafe read", broken_link_image, 1, "broken symbolic link", "gone.png"))

    def readme_checkpoint(d, b):
        (d / "README.md").write_text("# my project\n\nnot weights at all\n")
        return ["export", "README.md", "--out", "out"]

    add(Case("export-readme", "unsafe read", readme_checkpoint, 1, "not a checkpoint", "README.md"))

    def pickle_checkpoint(d, b):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch PWNED",))

        (d / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
        return ["export", "evil.pth", "--out", "out"]

    add(
        Case(
            "checkpoint-pickle-payload",
            "unsafe read",
            pickle_checkpoint,
            1,
            "refused to load|not a PyTorch",
            "evil.pth",
            check=lambda d, r: _assert(not (d / "PWNED").exists()),
        )
    )

    # ---- tracebacks that abort a run ------------------------------------------------------------------
    def text_chunk_bomb(d, b):
        (d / "imgs").mkdir()
        data = b"Comment\x00\x00" + zlib.compress(b"a" * 3_000_000, 9)
        _png_with_chunk_before_idat(d / "imgs" / "ztxt.png", _chunk(b"zTXt", data))
        _png(d / "imgs" / "ok.png")
        return infer("imgs", "--format", "jsonl", "--output", "out.jsonl")

    add(
        Case(
            "png-text-chunk-bomb",
            "traceback",
            text_chunk_bomb,
            2,
            "skipped",
            "ztxt.png",
            outputs=("out.jsonl",),
            rows=("out.jsonl", 2),
        )
    )

    def ppm_as_png(d, b):
        (d / "imgs").mkdir()
        (d / "imgs" / "fake.png").write_bytes(b"P6\n4 x\n255\n" + b"\x00" * 48)
        _png(d / "imgs" / "ok.png")
        return infer("imgs", "--format", "jsonl", "--output", "out.jsonl")

    add(
        Case(
            "ppm-renamed-png",
            "traceback",
            ppm_as_png,
            2,
            "skipped",
            "fake.png",
            outputs=("out.jsonl",),
            rows=("out.jsonl", 2),
        )
    )

    def truncated_jpeg(d, b):
        (d / "imgs").mkdir()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(d / "imgs" / "t.jpg", quality=90)
        data = (d / "imgs" / "t.jpg").read_bytes()
        (d / "imgs" / "t.jpg").write_bytes(data[: len(data) // 2])
        _png(d / "imgs" / "ok.png")
        return infer("imgs", "--format", "csv", "--output", "out.csv")

    add(Case("truncated-jpeg", "traceback", truncated_jpeg, 2, "skipped", "t.jpg", outputs=("out.csv",)))

    def empty_image(d, b):
        (d / "imgs").mkdir()
        (d / "imgs" / "empty.jpg").write_bytes(b"")
        return infer("imgs")

    add(Case("empty-image-only", "traceback", empty_image, 2, "none of the 1 images", None))

    for value in ("0", "-5"):

        def resize(d, b, value=value):
            _edit_manifest(
                d / "export", lambda m: m["model"]["preprocess"].__setitem__("resize_size", int(value))
            )
            return infer(good(d))

        add(Case(f"manifest-resize-{value}", "traceback", resize, 1, "resize_size", "manifest"))

    def swapped_baseline(d, b):
        shutil.copy(d / "export" / "baseline.onnx", d / "export" / "stage1.onnx")
        _rehash(d / "export", "stage1")
        return infer(good(d))

    add(Case("graph-swapped-for-baseline", "traceback", swapped_baseline, 1, "confidence", "stage1.onnx"))

    def wrong_input_size(d, b):
        def edit(m):
            m["graphs"]["stage1"]["inputs"][0]["shape"] = ["batch", 3, 96, 96]

        _edit_manifest(d / "export", edit)
        return infer(good(d))

    add(Case("graph-input-96-vs-manifest", "traceback", wrong_input_size, 1, "shape|96", "stage1.onnx"))

    def deep_json(d, b):
        (d / "export" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
        return infer(good(d))

    add(
        Case(
            "manifest-json-100k-deep",
            "traceback",
            deep_json,
            1,
            "nested too deeply|manifest",
            "manifest.json",
        )
    )

    def garbage_manifest(d, b):
        (d / "export" / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
        return infer(good(d))

    add(Case("manifest-not-json", "traceback", garbage_manifest, 1, "not valid JSON", "manifest.json"))

    def export_unwritable(d, b):
        return ["export", str(b / "tiny.safetensors"), "--out", "/proc/sacvit-out", "--no-verify"]

    add(
        Case(
            "export-out-unwritable-place",
            "traceback",
            export_unwritable,
            1,
            "cannot create the output folder",
            "/proc/sacvit-out",
        )
    )

    for text in ("²", "1,,2", "-1", "8;rm", "0x10"):

        def sizes(d, b, text=text):
            return ["profile", "--artifacts", "export", "--batch-sizes", text]

        add(Case(f"profile-batch-sizes-{text}", "traceback", sizes, 1, "positive integers", "--batch-sizes"))

    def disk_full_jsonl(d, b):
        (d / "imgs").mkdir()
        for i in range(12):
            _png(d / "imgs" / f"{i:02d}.png", colour=(i * 20, 0, 0))
        return infer("imgs", "--format", "jsonl", "--output", "out.jsonl", "--batch-size", "4")

    def cut_to_whole_rows(d, r):
        rows = _jsonl_rows(d / "out.jsonl")
        assert 0 < len(rows) < 12
        assert f"{len(rows)} rows in out.jsonl" in r.stderr
        assert r.stderr.count("error:") == 1

    add(
        Case(
            "disk-full-jsonl",
            "traceback",
            disk_full_jsonl,
            1,
            "writing the results failed",
            "out.jsonl",
            outputs=("out.jsonl",),
            check=cut_to_whole_rows,
            limit_fsize=700,
        )
    )

    def disk_full_csv(d, b):
        (d / "imgs").mkdir()
        for i in range(12):
            _png(d / "imgs" / f"{i:02d}.png", colour=(0, i * 20, 0))
        return infer("imgs", "--format", "csv", "--output", "out.csv", "--batch-size", "4", "--topk", "3")

    def csv_whole(d, r):
        text = (d / "out.csv").read_text()
        assert text.endswith("\n")
        lines = text.splitlines()
        assert all(len(line.split(",")) == len(lines[0].split(",")) for line in lines)

    add(
        Case(
            "disk-full-csv",
            "traceback",
            disk_full_csv,
            1,
            "writing the results failed",
            "out.csv",
            outputs=("out.csv",),
            check=csv_whole,
            limit_fsize=600,
        )
    )

    # ---- bad values accepted silently ----------------------------------------------------------------
    def nan_threshold(d, b):
        return infer(good(d), "--threshold", "nan")

    add(Case("infer-threshold-nan", "silent acceptance", nan_threshold, 1, "finite", "--threshold"))

    def nan_profile(d, b):
        return ["profile", "--artifacts", "export", "--threshold", "nan"]

    add(Case("profile-threshold-nan", "silent acceptance", nan_profile, 1, "finite", "--threshold"))

    def nan_export(d, b):
        return ["export", str(b / "tiny.safetensors"), "--out", "out", "--threshold", "nan", "--no-verify"]

    add(Case("export-threshold-nan", "silent acceptance", nan_export, 1, "--threshold", "--threshold"))

    def nan_weights(d, b):
        _checkpoint_with(
            d / "nan.safetensors", lambda sd, cfg: sd["head.weight"].view(-1).__setitem__(3, float("nan")), b
        )
        return ["export", "nan.safetensors", "--out", "out", "--no-verify"]

    add(
        Case(
            "checkpoint-nan-weight",
            "silent acceptance",
            nan_weights,
            1,
            "tensor head.weight holds 1 NaN",
            "nan.safetensors",
        )
    )

    def inf_weights(d, b):
        _checkpoint_with(
            d / "inf.safetensors", lambda sd, cfg: sd["cls_token"].view(-1).__setitem__(0, float("inf")), b
        )
        return ["export", "inf.safetensors", "--out", "out", "--no-verify"]

    add(
        Case(
            "checkpoint-inf-weight",
            "silent acceptance",
            inf_weights,
            1,
            "tensor cls_token holds 1 Inf",
            "inf.safetensors",
        )
    )

    def wrong_dim_config(d, b):
        _checkpoint_with(d / "dim.safetensors", lambda sd, cfg: cfg.__setitem__("embed_dim", 64), b)
        return ["export", "dim.safetensors", "--out", "out", "--no-verify"]

    add(
        Case(
            "checkpoint-config-embed-dim-mismatch",
            "silent acceptance",
            wrong_dim_config,
            1,
            "embed_dim 64",
            "dim.safetensors",
        )
    )

    def labels_count(d, b):
        (d / "labels.txt").write_text("cat\ndog\n")
        return infer(good(d), "--labels", "labels.txt")

    add(
        Case(
            "labels-wrong-count",
            "silent acceptance",
            labels_count,
            1,
            "2 labels for a model with 10",
            "labels.txt",
        )
    )

    def labels_binary(d, b):
        (d / "labels.txt").write_bytes(b"\xff\xfe\xfa\x00")
        return infer(good(d), "--labels", "labels.txt")

    add(
        Case("labels-not-utf8", "silent acceptance", labels_binary, 1, "cannot read the labels", "labels.txt")
    )

    def no_images(d, b):
        (d / "empty").mkdir()
        (d / "empty" / "notes.txt").write_text("x")
        return infer("empty")

    add(Case("folder-without-images", "silent acceptance", no_images, 1, "no images found", "empty"))

    def glob_nothing(d, b):
        return infer("imgs/*.jpg")

    add(
        Case(
            "glob-matches-nothing",
            "silent acceptance",
            glob_nothing,
            1,
            "glob matched no files",
            "imgs/*.jpg",
        )
    )

    def export_batch_zero(d, b):
        return ["export", str(b / "tiny.safetensors"), "--out", "out", "--batch", "0"]

    add(Case("export-batch-0", "silent acceptance", export_batch_zero, 1, "positive integer", "--batch"))

    def mixed_ok(d, b):
        (d / "imgs").mkdir()
        Image.new("I;16", (30, 20)).save(d / "imgs" / "deep.png")
        Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(d / "imgs" / "clear.png")
        Image.new("P", (20, 20)).save(
            d / "imgs" / "anim.gif", save_all=True, append_images=[Image.new("P", (20, 20), 3)]
        )
        return infer("imgs", "--format", "jsonl", "--output", "out.jsonl")

    add(
        Case(
            "legal-odd-images-all-classified",
            "silent acceptance",
            mixed_ok,
            0,
            outputs=("out.jsonl",),
            rows=("out.jsonl", 3),
        )
    )
    return cases


CASES = _cases()


def _assert(cond: bool) -> None:
    assert cond


def _assert_in(text: str, part: str) -> None:
    assert part in text, text


# ---- running ---------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            p = Path(root, name)
            rel = p.relative_to(folder).as_posix()
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file() and not p.is_fifo():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{st.st_mode & 0o777:o}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "special"
    return out


def _run(case: Case, folder: Path, base: Path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    argv = case.setup(folder, base)
    before = _snapshot(folder)

    def limits() -> None:
        if case.limit_fsize is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill: a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.limit_fsize, case.limit_fsize))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    result = subprocess.run(
        [*CLI, *argv],
        cwd=folder,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=TIMEOUT_S,
        env=env,
        preexec_fn=limits,
    )
    return result, before, _snapshot(folder)


@pytest.fixture(scope="module")
def corpus(base, tmp_path_factory, request) -> dict[str, tuple]:
    """Every selected case (``-k`` works), run once, four subprocesses at a time."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    }
    root = tmp_path_factory.mktemp("hostile-cases")
    folders = {}
    for i, case in enumerate(CASES):
        folder = root / f"{i:03d}"
        folder.mkdir()
        shutil.copytree(base / "export", folder / "export")
        folders[case.id] = folder
    runnable = [c for c in CASES if c.id in selected and not (c.needs_user and ROOT)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(_run, c, folders[c.id], base) for c in runnable}
        results = {}
        for cid, f in futures.items():
            try:
                results[cid] = (folders[cid], *f.result())
            except Exception as exc:  # a broken setup fails its own case, not the corpus
                results[cid] = exc
        return results


def test_corpus_is_big_and_covers_every_class():
    kinds = {c.kind for c in CASES}
    assert kinds == {"data loss", "forgery", "unsafe read", "traceback", "silent acceptance"}
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, corpus):
    if case.needs_user and ROOT:
        pytest.skip("permission checks do not apply to root")
    if isinstance(corpus[case.id], Exception):
        raise corpus[case.id]
    folder, result, before, after = corpus[case.id]
    where = f"{case.id}: rc {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    assert result.returncode in codes, where
    assert "Traceback" not in result.stderr, where
    assert not _CONTROL.search(result.stderr), where
    if not case.raw_stdout:
        assert not _CONTROL.search(result.stdout), where
    if case.message is not None:
        assert re.search(case.message, result.stderr), where
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if result.returncode == 1:
        assert len(errors) == 1, where  # one line, not a cascade
        if case.names is not None:
            assert case.names in errors[0], where
    elif case.names is not None:
        assert case.names in result.stderr, where
    # Nothing outside the declared outputs changed (added, removed, rewritten, re-moded).
    allowed = case.outputs

    def declared(rel: str) -> bool:
        return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in allowed)

    changed = sorted(
        k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and not declared(k)
    )
    assert not changed, f"{case.id}: changed outside the outputs: {changed}\n{where}"
    if case.rows is not None:
        name, count = case.rows
        assert len(_jsonl_rows(folder / name)) == count, where
    if case.check is not None:
        case.check(folder, result)


# ---- signals: whole rows and a summary ----------------------------------------------------------------
def _signal_run(
    base: Path,
    tmp_path: Path,
    sig: int,
    wait_for_rows: bool,
    after: float = 1.0,
    command: list[str] = CLI,
) -> tuple[subprocess.CompletedProcess, Path]:
    shutil.copytree(base / "export", tmp_path / "export")
    (tmp_path / "imgs").mkdir()
    for i in range(400):
        _png(tmp_path / "imgs" / f"{i:03d}.png", colour=(i % 255, 9, 9))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [*command, *infer("imgs", "--format", "jsonl", "--output", "out.jsonl", "--batch-size", "2")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    if wait_for_rows:
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 600):
            time.sleep(0.05)
    else:
        time.sleep(after)  # still importing typer / torch / onnxruntime
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_keeps_whole_rows_and_prints_a_summary(base, tmp_path, sig):
    result, out = _signal_run(base, tmp_path, sig, wait_for_rows=True)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    rows = _jsonl_rows(out)
    assert 0 < len(rows) < 400
    assert f"interrupted: {len(rows)} images classified" in result.stderr, result.stderr


_SCRIPT = [str(Path(sys.executable).with_name("sacvit-deploy"))]


@pytest.mark.parametrize("after", [0.2, 0.6, 1.0])
@pytest.mark.parametrize("command", [CLI, _SCRIPT], ids=["python-m", "console-script"])
def test_ctrl_c_while_importing_gives_no_traceback(base, tmp_path, command, after):
    """Across the import window: a KeyboardInterrupt inside an extension's initialisation once
    aborted the process (pybind11 -> std::terminate, rc -6) or, under ``python -m``, turned exit
    code 130 into death by SIGINT (rc -2) after "interrupted" was printed. Without torch the window is
    about a second (numpy, onnx, onnxruntime); at 1.7 s a quiet machine had classified all 400."""
    if not Path(command[0]).exists():
        pytest.skip("the console script is not installed next to this Python")
    result, _ = _signal_run(base, tmp_path, signal.SIGINT, wait_for_rows=False, after=after, command=command)
    assert result.returncode == 130, (result.returncode, result.stderr)  # 400 images: still running
    assert "Traceback" not in result.stderr, result.stderr
    assert "terminate called" not in result.stderr, result.stderr
    assert "interrupted" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("body", "stderr"),
    [
        ("raise KeyboardInterrupt", "interrupted\n"),  # typer makes this a silent exit 130
        ("print('interrupted: 3 rows', file=sys.stderr); raise typer.Exit(130)", "interrupted: 3 rows\n"),
    ],
    ids=["ctrl-c-in-a-command", "command-reports-its-own-interruption"],
)
def test_an_interrupted_command_says_so_once_and_exits_130(tmp_path, body, stderr):
    program = (
        "import sys, typer\n"
        "import sacvit_deploy.cli as cli\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        f"def run():\n    {body}\n"
        "cli.main = app\n"
        "from sacvit_deploy.__main__ import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (130, stderr)


_INTERRUPTED_IMPORT = """\
import os, signal
try:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this module initialises
    for _ in range(100_000):
        pass
except KeyboardInterrupt:
    raise ImportError("import slowmod failed") from None  # what numpy's C code makes of it
LOADED = True
"""


def test_ctrl_c_during_a_commands_own_import_is_an_interruption(tmp_path):
    """A command's lazy import (onnxruntime, the exporter) interrupted by Ctrl-C: held until the
    import is done, then "interrupted" and 130; not the import's own error ("onnxruntime is not
    installed", a RuntimeError from a class body) or a traceback."""
    (tmp_path / "slowmod.py").write_text(_INTERRUPTED_IMPORT)
    program = (
        "import sys, typer\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import sacvit_deploy.cli as cli\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def run():\n"
        "    import slowmod\n"
        "    print('still running:', slowmod.LOADED)\n"
        "cli.main = app\n"
        "from sacvit_deploy.__main__ import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")
    # The hook alone: the import completes, the KeyboardInterrupt comes right after it.
    program = (
        "import builtins, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from sacvit_deploy.__main__ import _ImportsHoldSignals\n"
        "builtins.__import__ = _ImportsHoldSignals(builtins.__import__)\n"
        "try:\n"
        "    import slowmod\n"
        "except KeyboardInterrupt:\n"
        "    print('after the import:', sys.modules['slowmod'].LOADED)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.stdout == "after the import: True\n", result.stderr


def _jpeg_with_truncated_exif(path: Path) -> Path:
    """A JPEG whose EXIF directory promises two entries and holds one and a bit: Pillow decodes the
    pixels and warns "Corrupt EXIF data" (from TiffImagePlugin, which names no file)."""
    entry = struct.pack("<HHL4s", 0x010E, 2, 4, b"abc\x00")
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entry + b"\x00\x01\x02\x03"
    Image.new("RGB", (40, 30), (30, 200, 30)).save(path, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return path


def test_a_pillow_warning_is_one_escaped_line_naming_the_image(base, tmp_path):
    shutil.copytree(base / "export", tmp_path / "export")
    (tmp_path / "imgs").mkdir()
    _jpeg_with_truncated_exif(tmp_path / "imgs" / "a\x1b[2Jcam.jpg")
    _jpeg_with_truncated_exif(tmp_path / "imgs" / "b.jpg")
    _png(tmp_path / "imgs" / "c.png")
    result = subprocess.run(
        [*CLI, *infer("imgs", "--format", "jsonl", "--workers", "2")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3  # the images still run
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert sorted(warned) == [
        "warning: imgs/a\\x1b[2Jcam.jpg: Corrupt EXIF data.  Expecting to read 12 bytes but only got 4.",
        "warning: imgs/b.jpg: Corrupt EXIF data.  Expecting to read 12 bytes but only got 4.",
    ], result.stderr
    assert "warnings.warn" not in result.stderr and "PIL" not in result.stderr, result.stderr
    assert not _CONTROL.search(result.stderr), result.stderr


# ---- the image decoder under mutation ---------------------------------------------------------------
def _seeds(folder: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    seeds = []
    for fmt, extra in (
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {}),
        ("PPM", {}),
        ("ICO", {}),
    ):
        path = folder / f"seed.{fmt.lower()}"
        pixels.save(path, fmt, **extra)
        seeds.append(path.read_bytes())
    path = folder / "seed16.png"
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(path)
    seeds.append(path.read_bytes())
    return seeds


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = int(rng.integers(0, 5))
        at = int(rng.integers(0, max(1, len(b))))
        if op == 0 and b:  # flip bytes
            b[at] = int(rng.integers(0, 256))
        elif op == 1:  # truncate
            b = b[: max(1, at)]
        elif op == 2:  # insert junk
            b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8))
        elif op == 3 and len(b) > 8:  # a header field set to an extreme value
            b[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
        else:  # duplicate a slice
            end = min(len(b), at + int(rng.integers(1, 64)))
            b[at:at] = b[at:end]
    return bytes(b)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt EXIF and TIFF tags
def test_decoder_fuzz_only_per_file_errors_escape(tmp_path, monkeypatch):
    from sacvit_deploy.model.config import PreprocessConfig
    from sacvit_deploy.runtime import images as images_mod

    monkeypatch.setattr(images_mod, "MAX_PIXELS", 4_000_000)  # mutated headers claim huge sizes: stay fast
    cfg = PreprocessConfig(input_size=16, resize_size=18)
    seeds = _seeds(tmp_path)
    rng = np.random.default_rng(20261201)
    out = np.empty((3, 16, 16), np.float32)
    suffixes = [".png", ".jpg", ".gif", ".bmp", ".tif", ".webp", ".ppm", ".ico", ".png"]
    failures = 0
    n = 3000
    path = tmp_path / "mutant"
    for i in range(n):
        which = int(rng.integers(0, len(seeds)))
        p = path.with_suffix(suffixes[which])
        p.write_bytes(_mutate(seeds[which], rng))
        result = images_mod._load_into(p, cfg, out)  # the batch path: never raises
        if result is not None:
            assert isinstance(result, images_mod.ImageLoadError), f"case {i}: {result!r}"
            assert str(p) in str(result) and "\n" not in str(result)
            failures += 1
    assert 0 < failures < n  # the fuzz both breaks files and leaves some decodable
