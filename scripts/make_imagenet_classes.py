"""Regenerate sacvit_deploy/data/imagenet_classes.txt (the 1000 ImageNet-1k class names, in index order).

Source: torchvision's `_IMAGENET_CATEGORIES` (BSD-3-Clause), read from its wheel without importing
torchvision (which does not import beside this project's torch build). Developer-only: needs PyPI.

    python scripts/make_imagenet_classes.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sacvit_deploy" / "data" / "imagenet_classes.txt"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "torchvision==0.29.1"],
            check=True,
        )
        wheel = next(Path(tmp).glob("torchvision-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            source = zf.read("torchvision/models/_meta.py").decode()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "_IMAGENET_CATEGORIES" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            break
    else:
        raise SystemExit("_IMAGENET_CATEGORIES not found in torchvision/models/_meta.py")
    if len(names) != 1000:
        raise SystemExit(f"expected 1000 names, got {len(names)}")
    OUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(names)} names)")


if __name__ == "__main__":
    main()
