"""The one comparator: do two named runners of the same early-exit model give the same answers?

Export verification (ONNX Runtime vs the eager PyTorch model), ``check --run`` (ONNX Runtime vs the
saved weights), the build-engine parity check (TensorRT vs ONNX Runtime) and quantize's int8-vs-float
folder check all call :func:`compare` (or :func:`compare_detailed`, which also returns each side's
answers, for accuracy against labels). A *named runner* is a name plus one callable per graph role (``stage1``, ``stage2``,
optionally ``baseline``) that maps a feed of numpy arrays to a dict of numpy arrays; the eager PyTorch
model is just another one. The higher layers adapt their runners (``runtime.parity``).

Rows, on one image batch:

* ``stage1``: logits and confidence, top-1, target-token sets;
* ``stage2``: both sides fed the REFERENCE's stage-1 outputs, so stage 2 is judged on its own;
* ``pipeline@T``: each side runs the whole early exit with its own decisions (the candidate's stage
  2 sees only the samples its own gate sent there) at the export threshold and at a threshold midway
  through the batch's confidences (a mixed batch): exit decisions and final logits;
* ``baseline`` when both sides have it.

Tolerance, and why it is relative to the reference's scale: float32 rounding in a 12-block network
grows with the magnitude of the activations, so the error on EVERY logit is proportional to the
logits' overall scale, not to that element's own value. A trained head (logit std ~4, max |logit|
~15) shows ~2e-4 ONNX Runtime vs PyTorch: relative 1e-5, but over a fixed 1e-4. An element-wise
``atol + rtol*|ref_i|`` would give logits near zero no room at all, so the limit is per tensor::

    max |candidate - reference|  <=  atol + rtol * max |reference|

with atol 1e-4, rtol 1e-4 (for max |logit| 15: 1.6e-3, eight times the rounding seen, and a
hundred times below what a perturbed block, a wrong position embedding or swapped stage inputs do:
see tests/test_compare.py).

Decisions must agree exactly (``min_agreement`` 1.0 by default) on every sample whose decision is
not within a hair of its boundary, where the hair is the numeric limit itself: top-1 where the
reference's top-2 margin exceeds twice the logits' limit, the exit decision where the reference's
confidence is farther than the confidence limit from the threshold. Target-token sets must be equal.
For reduced precision (FP16 / INT8 engines, INT8 Q/DQ graphs) numbers are reported, not gated
(``tolerance=None``), and decisions must agree on ``min_agreement`` of the samples farther than
``hair`` from their boundary: :func:`reduced_precision`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from sacvit_deploy.core.errors import SacvitError
from sacvit_deploy.core.exit_rule import ExitRule

StageFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
STAGE2_FEED = ("target_index", "nontarget_tokens", "target_features")


@dataclass(frozen=True)
class Tolerance:
    """Per-tensor limit ``atol + rtol * max|reference|`` on the max absolute difference."""

    atol: float = 1e-4
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < float("inf")):
                raise SacvitError(f"--{name} {v!r}: must be a finite number >= 0")

    def limit(self, reference: np.ndarray) -> float:
        scale = float(np.abs(reference).max()) if reference.size else 0.0
        return self.atol + self.rtol * scale


@dataclass(frozen=True)
class Criteria:
    """What makes a row pass. ``tolerance=None``: numbers are reported, not gated (reduced precision)."""

    tolerance: Optional[Tolerance] = field(default_factory=Tolerance)
    min_agreement: float = 1.0
    # Without a tolerance: how close to its boundary (top-2 logit margin / 2, |confidence - threshold|)
    # a decision may sit and still be left out. With one, the numeric limit is the hair.
    hair: float = 0.0


EXACT = Criteria()
# Reduced precision keeps ~3 decimal digits: a confidence within 5e-3 of the threshold (or a top-2
# logit margin under 1e-2) may flip without anything being wrong.
DECISION_HAIR = 5e-3
REDUCED_MIN_AGREEMENT = 0.99


def reduced_precision(min_agreement: float = REDUCED_MIN_AGREEMENT, hair: float = DECISION_HAIR) -> Criteria:
    """The decision-agreement criteria: numbers reported, decisions gated away from their boundary."""
    return Criteria(tolerance=None, min_agreement=min_agreement, hair=hair)


@dataclass(frozen=True)
class NamedRunner:
    """A name and one callable per graph role: numpy feed -> numpy outputs."""

    name: str
    stages: Mapping[str, StageFn]


@dataclass
class ParityRow:
    check: str  # stage1 | stage2 | pipeline@T | baseline
    images: str  # e.g. random | real
    samples: int
    max_abs_diff: float
    limit: Optional[float]  # the numeric limit of the worst tensor; None when not gated
    top1_agreement: float
    exit_agreement: Optional[float] = None
    selection_agreement: Optional[float] = None
    undecided: int = 0  # samples left out of a decision because they sit within a hair of its boundary
    passed: bool = True
    reason: str = ""  # why it failed
    relative_diff: Optional[float] = None  # max_abs_diff / std of that tensor's reference values

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(_f64(a) - _f64(b)).max()) if np.size(a) else 0.0


def _agreement(same: np.ndarray, decidable: np.ndarray) -> float:
    n = int(decidable.sum())
    return float(same[decidable].mean()) if n else 1.0


def _top2_margin(logits: np.ndarray) -> np.ndarray:
    if logits.shape[-1] < 2:
        return np.full(logits.shape[0], np.inf)
    part = np.sort(_f64(logits), axis=-1)
    return part[:, -1] - part[:, -2]


class _Row:
    """Accumulates one row's numeric checks and decision checks, then judges it."""

    def __init__(self, check: str, images: str, samples: int, criteria: Criteria) -> None:
        self.row = ParityRow(check, images, samples, 0.0, None, 1.0)
        self.criteria = criteria
        self.failures: List[str] = []
        self._worst = -1.0

    def numbers(self, what: str, got: np.ndarray, ref: np.ndarray) -> Optional[float]:
        """Record max |got - ref|; returns the tensor's limit (None when not gated)."""
        d = _diff(got, ref)
        tol = self.criteria.tolerance
        limit = tol.limit(ref) if tol is not None else None
        ratio = d / limit if limit else d
        if ratio > self._worst:
            self._worst = ratio
            self.row.max_abs_diff, self.row.limit = d, limit
            std = float(_f64(ref).std()) if np.size(ref) > 1 else 0.0
            self.row.relative_diff = d / std if std > 0 else (float("inf") if d > 0 else 0.0)
        if limit is not None and not d <= limit:  # NaN fails too
            self.failures.append(f"{what} differ by {d:.2e}, over the {limit:.1e} limit")
        return limit

    def top1(self, got: np.ndarray, ref: np.ndarray, limit: Optional[float]) -> None:
        same = got.argmax(-1) == ref.argmax(-1)
        hair = limit if limit is not None else self.criteria.hair
        decidable = _top2_margin(ref) > 2 * hair
        self.row.top1_agreement = _agreement(same, decidable)
        self.row.undecided += int((~decidable).sum())
        self._decision("top-1", self.row.top1_agreement)

    def exits(self, got: np.ndarray, ref: np.ndarray, decidable: np.ndarray) -> None:
        self.row.exit_agreement = _agreement(got == ref, decidable)
        self.row.undecided += int((~decidable).sum())
        self._decision("exit decisions", self.row.exit_agreement)

    def selection(self, got: np.ndarray, ref: np.ndarray) -> None:
        same = (np.sort(got.astype(np.int64), axis=1) == np.sort(ref.astype(np.int64), axis=1)).all(axis=1)
        self.row.selection_agreement = float(same.mean()) if same.size else 1.0
        if self.criteria.tolerance is not None:  # reduced precision may legitimately move near-ties
            self._decision("target-token sets", self.row.selection_agreement)

    def _decision(self, what: str, agreement: float) -> None:
        if agreement < self.criteria.min_agreement:
            self.failures.append(f"{what} agree on {agreement:.1%}, under {self.criteria.min_agreement:.0%}")

    def done(self) -> ParityRow:
        self.row.passed = not self.failures
        self.row.reason = "; ".join(self.failures)
        return self.row


def mixed_threshold(confidence: np.ndarray) -> float:
    """A threshold that splits a batch roughly in half, midway between two samples' confidences.

    Not the median itself: a threshold equal to a sample's confidence makes that sample's exit
    decision depend on the last float bit, which differs between backends.
    """
    if hasattr(confidence, "detach"):  # a torch tensor at the API edge (no torch import here)
        confidence = confidence.detach().cpu().numpy()
    c = np.sort(np.asarray(confidence, dtype=np.float64).ravel())
    if c.size < 2:
        return float(c[0]) if c.size else 0.5
    mid = c.size // 2
    return float((c[mid - 1] + c[mid]) / 2)


def _take(out: Mapping[str, np.ndarray], names: Tuple[str, ...], rows: np.ndarray) -> Dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(out[k][rows]) for k in names}


def _early_exit(
    stages: Mapping[str, StageFn], images: np.ndarray, out1: Mapping[str, np.ndarray], threshold: float
) -> Tuple[np.ndarray, np.ndarray]:
    """(logits, stage) of one side's own early exit: its gate, its compaction, its stage 2."""
    rule = ExitRule(threshold)
    confidence = np.asarray(out1["confidence"])
    logits = _f64(out1["logits"]).copy()
    stage = rule.stage(confidence)
    hard = rule.hard_indices(confidence)
    if hard.size:
        feed = {"image": np.ascontiguousarray(images[hard]), **_take(out1, STAGE2_FEED, hard)}
        logits[hard] = _f64(stages["stage2"](feed)["logits"])
    return logits, stage


@dataclass
class Answers:
    """One side's outputs on the whole batch: what accuracy against labels needs."""

    logits1: np.ndarray  # stage 1
    logits2: np.ndarray  # stage 2 fed the REFERENCE's stage-1 outputs (the same feed for both sides)
    final: np.ndarray  # the early exit's answer at the comparison's threshold (own decisions)
    stage: np.ndarray  # 1 or 2: where each sample was answered
    baseline: Optional[np.ndarray] = None


@dataclass
class Comparison:
    rows: List[ParityRow]
    reference: Answers
    candidate: Answers


def compare(
    reference: NamedRunner,
    candidate: NamedRunner,
    images: np.ndarray,
    threshold: float,
    label: str = "random",
    criteria: Criteria = EXACT,
) -> List[ParityRow]:
    """Parity rows of ``candidate`` against ``reference`` on one preprocessed image batch."""
    return compare_detailed(reference, candidate, images, threshold, label, criteria).rows


def compare_detailed(
    reference: NamedRunner,
    candidate: NamedRunner,
    images: np.ndarray,
    threshold: float,
    label: str = "random",
    criteria: Criteria = EXACT,
) -> Comparison:
    """:func:`compare`, plus both sides' answers (for accuracy against labels)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    n = images.shape[0]
    rows: List[ParityRow] = []
    ref1 = reference.stages["stage1"]({"image": images})
    got1 = candidate.stages["stage1"]({"image": images})

    row = _Row("stage1", label, n, criteria)
    limit = row.numbers("logits", got1["logits"], ref1["logits"])
    conf_limit = row.numbers("confidence", got1["confidence"], ref1["confidence"])
    row.top1(got1["logits"], ref1["logits"], limit)
    row.selection(got1["target_index"], ref1["target_index"])
    rows.append(row.done())

    feed = {"image": images, **_take(ref1, STAGE2_FEED, np.arange(n))}
    ref2 = reference.stages["stage2"](feed)["logits"]
    got2 = candidate.stages["stage2"](feed)["logits"]
    row = _Row("stage2", label, n, criteria)
    row.top1(got2, ref2, row.numbers("logits", got2, ref2))
    rows.append(row.done())

    ref_conf = np.asarray(ref1["confidence"])
    hair = conf_limit if conf_limit is not None else criteria.hair
    answers: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for th in dict.fromkeys((float(threshold), mixed_threshold(ref_conf))):
        rule = ExitRule(th)
        ref_stage = rule.stage(ref_conf)
        ref_logits = np.where((ref_stage == 1)[:, None], _f64(ref1["logits"]), _f64(ref2))
        got_logits, got_stage = _early_exit(candidate.stages, images, got1, th)
        answers.append((ref_logits, ref_stage, got_logits, got_stage))
        decidable = ~rule.near(ref_conf, hair)
        row = _Row(f"pipeline@{th:.3f}", label, n, criteria)
        row.exits(got_stage, ref_stage, decidable)
        same = decidable & (got_stage == ref_stage)  # logits compare where both took the same branch
        lim = row.numbers("logits", got_logits[same], ref_logits[same])
        if same.any():
            row.top1(got_logits[same], ref_logits[same], lim)
        rows.append(row.done())

    refb = gotb = None
    if "baseline" in reference.stages and "baseline" in candidate.stages:
        refb = reference.stages["baseline"]({"image": images})["logits"]
        gotb = candidate.stages["baseline"]({"image": images})["logits"]
        row = _Row("baseline", label, n, criteria)
        row.top1(gotb, refb, row.numbers("logits", gotb, refb))
        rows.append(row.done())
    ref_final, ref_stage, got_final, got_stage = answers[0]  # at ``threshold``
    return Comparison(
        rows,
        Answers(np.asarray(ref1["logits"]), np.asarray(ref2), ref_final, ref_stage, refb),
        Answers(np.asarray(got1["logits"]), np.asarray(got2), got_final, got_stage, gotb),
    )


def first_failure(rows: List[ParityRow]) -> Optional[ParityRow]:
    """The first failing row: stage 1 before stage 2 before the pipeline, the order a bug propagates."""
    return next((r for r in rows if not r.passed), None)
