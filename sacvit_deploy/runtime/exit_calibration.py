"""Calibrating the exit threshold on labelled images: the budgeted-classification curve.

Stage 1 AND stage 2 run once on every image (stage 2 fed with stage 1's outputs for the whole
batch), so both predictions are known; then any threshold's result is computed without running
the model again. A sample exits when ``confidence >= threshold``, compared in float32 as the
pipeline compares it. Per threshold:

- accuracy: top-1 of the combined prediction (stage 1's for exited samples, stage 2's otherwise);
- mean GFLOPs per image: ``stage1 + (1 - exit_rate) * stage2`` (:class:`FlopsReport`);
- exit rate: the fraction answered by stage 1.

The sweep runs from 0 to 1 in steps of 0.01, then in steps of 0.001 within +-0.01 of the point the
coarse grid chose, and chooses again on the union. Rules, one per target:

- ``accuracy A``: the LOWEST-COST threshold whose accuracy >= A.
- ``gflops G``: the MOST ACCURATE threshold whose mean GFLOPs <= G; equal accuracy: the cheaper.
- ``exit_rate R``: the threshold whose exit rate is closest to R without going below it.

Thresholds that give the same exit set give identical results; among such a tie the one nearest
the middle of the tied range is chosen (the farthest from the confidences on either side).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from sacvit_deploy.backends.arrays import as_host_batch, to_host
from sacvit_deploy.backends.base import Runner
from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import exit_mask
from sacvit_deploy.core.flops import FlopsReport
from sacvit_deploy.runtime.images import IMAGE_EXTENSIONS, _scan_folder
from sacvit_deploy.runtime.pipeline import run_any_batch, run_batched, stage2_feed

TARGETS = ("accuracy", "gflops", "exit_rate")
RULES = {
    "accuracy": "the lowest-cost threshold whose accuracy >= {value:g}",
    "gflops": "the most accurate threshold whose mean GFLOPs/image <= {value:g} (ties: the cheaper)",
    "exit_rate": "the threshold whose exit rate is closest to {value:g} without going below it",
}


# ---- labelled folders ---------------------------------------------------------------------------
@dataclass
class LabelledImages:
    """An ImageFolder: one sub-folder per class."""

    root: Path
    paths: List[Path]
    labels: List[int]
    mapping: str  # "names" (folder name = class name), "index" (= class index), "sorted" (folder i = class i)
    folders: Dict[str, int]  # folder name -> class index
    empty_folders: List[str] = field(default_factory=list)
    ignored_files: int = 0  # images directly in the root, outside any class folder

    def describe(self) -> str:
        how = {
            "names": "by name (every folder name is one of the manifest's class names)",
            "index": "by index (folder name = class index)",
            "sorted": "by sorted order (folder i = class i)",
        }[self.mapping]
        return f"{len(self.folders)} class folders mapped {how}"


FOLDER_MAPPINGS = ("names", "index", "sorted")


def find_labelled_images(
    root: Union[str, Path], num_classes: int, class_names: Optional[Sequence[str]], mapping: str = "names"
) -> LabelledImages:
    """Images and labels of an ImageFolder ``root/<class>/<image>`` (images found recursively).

    ``mapping`` says what a folder name means, and is never guessed: ``names``, each folder is named
    after one of ``class_names``; ``index``, each folder name is a class index (``0`` to
    ``num_classes - 1``); ``sorted``, the i-th folder in sorted order is class i (how torchvision's
    ImageFolder numbers classes). Raises :class:`SacvitError` for a missing or unlabelled folder, and
    for a folder that maps to no class, naming it and the fix.
    """
    if mapping not in FOLDER_MAPPINGS:
        raise ValueError(f"mapping must be one of {FOLDER_MAPPINGS}, not {mapping!r}")
    root = Path(root)
    if not root.is_dir():
        raise SacvitError(f"{root}: no such folder; give a labelled folder with one sub-folder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sum(
        1
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not folders:
        raise SacvitError(
            f"{root}: no class sub-folders ({loose} loose images); calibrate needs labelled images in the "
            f"ImageFolder layout: {root}/<class name>/<image>"
        )
    other = "say how the folders map: --folder-labels index (folder '3' = class 3) or sorted (i-th folder = class i)"
    if mapping == "names":
        names = list(class_names) if class_names else None
        if names is None:
            raise SacvitError(
                f"{root}: the model has no class names to match the folder names against; {other}"
            )
        stray = next((f for f in folders if f not in names), None)
        if stray is not None:
            examples = ", ".join(repr(n) for n in names[:3])
            raise SacvitError(
                f"{root / stray}: folder name {stray!r} is not one of the model's {len(names)} class names "
                f"({examples}, ...); rename the folders to class names, or {other}"
            )
        index = {f: names.index(f) for f in folders}
    elif mapping == "index":
        stray = next((f for f in folders if not (f.isdigit() and int(f) < num_classes)), None)
        if stray is not None:
            raise SacvitError(
                f"{root / stray}: folder name {stray!r} is not a class index 0-{num_classes - 1} "
                "(--folder-labels index); rename it, or use --folder-labels names or sorted"
            )
        index = {f: int(f) for f in folders}
    else:
        if len(folders) > num_classes:
            raise SacvitError(
                f"{root / folders[num_classes]}: folder maps to no class: {len(folders)} class folders for a model "
                f"with {num_classes} classes (sorted order, folder i = class i); remove the extra folders"
            )
        index = {f: i for i, f in enumerate(folders)}
    paths: List[Path] = []
    labels: List[int] = []
    empty = []
    for folder in folders:
        found = _scan_folder(root / folder)
        if not found:
            empty.append(folder)
        paths += found
        labels += [index[folder]] * len(found)
    if not paths:
        raise SacvitError(
            f"{root}: the class folders hold no images (expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return LabelledImages(root, paths, labels, mapping, index, empty, loose)


# ---- predictions ----------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Both stages' answers for every image: the input of the threshold sweep."""

    confidence: np.ndarray  # (N,) float32, stage 1's
    pred1: np.ndarray  # (N,) int64
    pred2: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        self.confidence = as_host_batch(self.confidence).astype(np.float32, copy=False).reshape(-1)
        self.pred1 = as_host_batch(self.pred1).astype(np.int64, copy=False).reshape(-1)
        self.pred2 = as_host_batch(self.pred2).astype(np.int64, copy=False).reshape(-1)
        self.labels = as_host_batch(self.labels).astype(np.int64, copy=False).reshape(-1)
        n = self.confidence.size
        if not n or any(t.size != n for t in (self.pred1, self.pred2, self.labels)):
            raise ValueError(
                "predictions need the same, non-zero number of confidences, predictions and labels"
            )

    @property
    def n(self) -> int:
        return int(self.confidence.size)

    @property
    def stage1_accuracy(self) -> float:
        return float((self.pred1 == self.labels).mean())

    @property
    def stage2_accuracy(self) -> float:
        return float((self.pred2 == self.labels).mean())


def predict_both_stages(
    stage1: Runner,
    stage2: Runner,
    batches: Iterable[Tuple[np.ndarray, Sequence[int]]],
    buckets: Optional[Sequence[int]] = None,
) -> Predictions:
    """Run stage 1 and stage 2 on every image of every (images, labels) batch (runners active)."""
    conf, p1, p2, ys = [], [], [], []
    for images, labels in batches:
        images = as_host_batch(images)
        n = images.shape[0]
        out1 = run_any_batch(stage1, {"image": images})
        feed = stage2_feed(images, out1, np.arange(n))  # every sample: stage 1's outputs as they are
        logits2 = run_batched(stage2, feed, n, buckets)["logits"]
        conf.append(to_host(out1["confidence"]).astype(np.float32, copy=False))
        p1.append(to_host(out1["logits"]).argmax(-1))
        p2.append(to_host(logits2).argmax(-1))
        ys.append(np.asarray(list(labels), dtype=np.int64))
    if not conf:
        raise SacvitError("no image could be read, nothing to calibrate on")
    return Predictions(np.concatenate(conf), np.concatenate(p1), np.concatenate(p2), np.concatenate(ys))


# ---- the sweep ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    n_exit: int
    n_correct: int
    n: int
    gflops: float  # mean per image

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n

    @property
    def exit_rate(self) -> float:
        return self.n_exit / self.n

    def to_dict(self) -> Dict[str, float]:
        return {
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "exit_rate": self.exit_rate,
            "gflops": self.gflops,
        }


def grid(step: float = 0.01, lo: float = 0.0, hi: float = 1.0) -> List[float]:
    """Thresholds lo, lo + step, ..., hi as exact decimal multiples of step, clipped to [0, 1]."""
    a, b = math.ceil(round(max(lo, 0.0) / step, 6)), math.floor(round(min(hi, 1.0) / step, 6))
    decimals = max(0, -math.floor(math.log10(step)))
    return [round(i * step, decimals) for i in range(a, b + 1)]


def evaluate(pred: Predictions, flops: FlopsReport, thresholds: Iterable[float]) -> List[CurvePoint]:
    """One curve point per threshold (sorted, duplicates dropped)."""
    ths = sorted(set(float(t) for t in thresholds))
    t = np.asarray(ths, dtype=np.float32)[:, None]  # float32, like the pipeline's comparison
    exits = exit_mask(pred.confidence[None, :], t)  # (T, N)
    right1 = (pred.pred1 == pred.labels)[None, :]
    right2 = (pred.pred2 == pred.labels)[None, :]
    n_exit = exits.sum(1).tolist()
    n_correct = np.where(exits, right1, right2).sum(1).tolist()
    return [
        CurvePoint(th, int(e), int(c), pred.n, flops.expected(e / pred.n))
        for th, e, c in zip(ths, n_exit, n_correct)
    ]


@dataclass(frozen=True)
class Target:
    kind: str  # accuracy | gflops | exit_rate
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise SacvitError(f"unknown calibration target {self.kind!r}; use one of {', '.join(TARGETS)}")
        if self.kind in ("accuracy", "exit_rate") and not 0.0 <= self.value <= 1.0:
            flag = "--target-accuracy" if self.kind == "accuracy" else "--target-exit-rate"
            raise SacvitError(f"{flag} {self.value:g}: give a fraction in [0, 1], e.g. 0.8")
        if self.kind == "gflops" and not self.value > 0:
            raise SacvitError(f"--target-gflops {self.value:g}: give a positive number of GFLOPs per image")

    @property
    def rule(self) -> str:
        return RULES[self.kind].format(value=self.value)


class UnreachableTarget(SacvitError):
    """No threshold meets the target; the message says the best achievable value."""


_EPS = 1e-9


def _middle(tied: List[CurvePoint]) -> CurvePoint:
    lo, hi = tied[0].threshold, tied[-1].threshold
    mid = (lo + hi) / 2
    return min(tied, key=lambda p: (abs(p.threshold - mid), p.threshold))


def choose(points: Sequence[CurvePoint], target: Target) -> CurvePoint:
    """The curve point that meets ``target`` by its rule (module docstring); raises UnreachableTarget."""
    pts = sorted(points, key=lambda p: p.threshold)
    if not pts:
        raise ValueError("choose() needs at least one curve point")
    if target.kind == "accuracy":
        ok = [p for p in pts if p.accuracy >= target.value - _EPS]
        if not ok:
            best = max(pts, key=lambda p: (p.n_correct, p.n_exit))
            raise UnreachableTarget(
                f"--target-accuracy {target.value:g} is unreachable on these {best.n} images: the best is "
                f"{best.accuracy:.4f} (threshold {best.threshold:g}); ask for at most that"
            )
        best_exit = max(p.n_exit for p in ok)  # lowest cost = most exits
        return _middle([p for p in ok if p.n_exit == best_exit])
    if target.kind == "gflops":
        ok = [p for p in pts if p.gflops <= target.value + _EPS]
        if not ok:
            cheapest = min(pts, key=lambda p: p.gflops)
            raise UnreachableTarget(
                f"--target-gflops {target.value:g} is unreachable: the cheapest is {cheapest.gflops:.4g} "
                f"GFLOPs/image (threshold {cheapest.threshold:g}, exit rate {cheapest.exit_rate:.3f}); ask for at least that"
            )
        best_correct = max(p.n_correct for p in ok)
        ok = [p for p in ok if p.n_correct == best_correct]
        best_exit = max(p.n_exit for p in ok)
        return _middle([p for p in ok if p.n_exit == best_exit])
    ok = [p for p in pts if p.exit_rate >= target.value - _EPS]
    if not ok:
        most = max(pts, key=lambda p: p.n_exit)
        raise UnreachableTarget(
            f"--target-exit-rate {target.value:g} is unreachable: the highest exit rate on the sweep is "
            f"{most.exit_rate:.3f} (threshold {most.threshold:g})"
        )
    fewest = min(p.n_exit for p in ok)
    return _middle([p for p in ok if p.n_exit == fewest])


@dataclass
class Calibration:
    points: List[CurvePoint]  # the union of the coarse and fine grids, sorted by threshold
    chosen: Optional[CurvePoint]
    target: Optional[Target]
    stage1_accuracy: float
    stage2_accuracy: float
    flops: FlopsReport
    n: int

    def point_at(self, threshold: float) -> CurvePoint:
        return min(self.points, key=lambda p: abs(p.threshold - threshold))

    def summary_rows(self, every: float = 0.05, extra: Sequence[float] = ()) -> List[CurvePoint]:
        """Points every ``every``, the chosen one and those at the ``extra`` thresholds, sorted."""
        keep = set(grid(every)) | {float(t) for t in extra}
        if self.chosen is not None:
            keep.add(self.chosen.threshold)
        return [p for p in self.points if p.threshold in keep]

    def record(self) -> Dict[str, Any]:
        """What ``--write`` stores in the manifest's ``calibration`` field."""
        assert self.chosen is not None and self.target is not None
        return {
            "threshold": self.chosen.threshold,
            "target": {"kind": self.target.kind, "value": self.target.value},
            "rule": self.target.rule,
            "accuracy": self.chosen.accuracy,
            "exit_rate": self.chosen.exit_rate,
            "gflops_per_image": self.chosen.gflops,
            "stage1_accuracy": self.stage1_accuracy,
            "stage2_accuracy": self.stage2_accuracy,
            "baseline_gflops": self.flops.baseline,
            "images": self.n,
        }


def calibrate(
    pred: Predictions,
    flops: FlopsReport,
    target: Optional[Target],
    step: float = 0.01,
    fine_step: float = 0.001,
    window: float = 0.01,
    extra: Sequence[float] = (),
) -> Calibration:
    """Sweep the threshold (coarse, then fine around the choice) and choose by ``target``'s rule.

    ``extra``: thresholds to evaluate too (the manifest's current one, for comparison).
    """
    thresholds = set(grid(step)) | {float(t) for t in extra}
    points = evaluate(pred, flops, thresholds)
    chosen = None
    if target is not None:
        first = choose(points, target)
        thresholds |= set(grid(fine_step, first.threshold - window, first.threshold + window))
        points = evaluate(pred, flops, thresholds)
        chosen = choose(points, target)
    return Calibration(points, chosen, target, pred.stage1_accuracy, pred.stage2_accuracy, flops, pred.n)


# ---- output ---------------------------------------------------------------------------------------
def write_csv(cal: Calibration, path: Path) -> Path:
    path = Path(path)
    try:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["threshold", "accuracy", "exit_rate", "gflops_per_image", "chosen"])
            for p in cal.points:
                w.writerow(
                    [
                        f"{p.threshold:g}",
                        f"{p.accuracy:.6f}",
                        f"{p.exit_rate:.6f}",
                        f"{p.gflops:.6f}",
                        int(cal.chosen is not None and p.threshold == cal.chosen.threshold),
                    ]
                )
    except OSError as exc:
        raise SacvitError(
            f"{path}: cannot write the curve ({exc.strerror or exc}); pick a writable path"
        ) from None
    return path


def images_and_labels(
    labelled: LabelledImages, batches: Iterable[Any]
) -> Iterable[Tuple[np.ndarray, List[int]]]:
    """(images, labels) per :func:`iter_batches` batch, labels looked up by path."""
    label_of = {os.fspath(p): y for p, y in zip(labelled.paths, labelled.labels)}
    for batch in batches:
        if batch.images.shape[0]:
            yield (
                np.ascontiguousarray(batch.images),
                [label_of[os.fspath(p)] for p in batch.paths],
            )
