"""Gradient check that tells kink-straddling coordinates from real mismatches.

A centered difference on W[d, c] with step h is exact for the hinge loss
(piecewise linear) plus L2 (quadratic) up to rounding, unless the step moves
some margin across 0: then it averages two slopes and disagrees with the
analytic gradient without saying anything about the code. Every such
coordinate is recomputed on the samples whose margins did not straddle; if
the mismatch disappears it was the kink (``kink``), otherwise ``FAIL``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from svmtool.core.loss import active, margins, svm_loss, svm_loss_naive

LossFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float, float], tuple[float, np.ndarray]]

DEFAULT_TOL = 1e-6
"""Away from kinks the centered difference of a piecewise linear-plus-quadratic
loss is exact up to rounding (about 1e-10 relative in float64 at h=1e-5); a
wrong gradient term shows up as 1e-3 or more. 1e-6 sits safely between."""

TINY = 1e-300


@dataclass
class KinkSample:
    """One margin that changes activity between W - h e and W + h e."""

    sample: int
    label: int
    cls: int
    margin: float
    step: float  # h * |x[n, d]|, how far the check moves this margin


@dataclass
class CoordCheck:
    """The check of one coordinate (d, c)."""

    d: int
    c: int
    numeric: float
    analytic: float
    rel_error: float
    straddled: int  # samples with at least one straddled margin
    status: str  # "ok", "kink" or "FAIL"
    kink_free_rel_error: float | None = None  # recomputed without straddling samples
    kinks: list[KinkSample] = field(default_factory=list)


@dataclass
class GradcheckReport:
    """Everything ``svmtool gradcheck`` shows."""

    checks: list[CoordCheck]
    near_kink_fraction: float
    near_kink_distance: float
    worst_kink_free_error: float
    loss: float
    tol: float
    h: float
    delta: float
    reg: float


def relative_error(numeric: float, analytic: float) -> float:
    """|n - a| / max(|n| + |a|, tiny); 0 when both are 0."""
    return abs(numeric - analytic) / max(abs(numeric) + abs(analytic), TINY)


def stepped(W: np.ndarray, d: int, c: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    """W + h e_dc and W - h e_dc: the two points of a centered difference."""
    plus, minus = W.copy(), W.copy()
    plus[d, c] += h
    minus[d, c] -= h
    return plus, minus


def straddling(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, delta: float, d: int, c: int, h: float
) -> tuple[np.ndarray, np.ndarray]:
    """Margins whose activity differs between W - h e_dc and W + h e_dc.

    Recomputed from the full products at both points (what the loss itself
    sees), so the test is exact. Returns the sample and class indices of the
    straddling margins.
    """
    plus, minus = stepped(W, d, c, h)
    flips = active(margins(X @ plus, y, delta)) != active(margins(X @ minus, y, delta))
    rows, cols = np.nonzero(flips)
    return rows, cols


def near_kink_fraction(margin_values: np.ndarray, distance: float) -> float:
    """Fraction of the N*(C-1) real margins with |M| <= distance (true-class entries are -inf)."""
    real = np.isfinite(margin_values)
    return float((np.abs(margin_values[real]) <= distance).mean()) if real.any() else 0.0


def _centered(
    fn: LossFn,
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    delta: float,
    d: int,
    c: int,
    h: float,
) -> tuple[float, float, float]:
    """Centered difference of ``fn``'s loss along W[d, c], and the two losses."""
    plus, minus = stepped(W, d, c, h)
    lp, lm = fn(plus, X, y, reg, delta)[0], fn(minus, X, y, reg, delta)[0]
    return (lp - lm) / (2 * h), lp, lm


def _status_ok(
    numeric: float, analytic: float, lp: float, lm: float, h: float, tol: float
) -> tuple[float, bool]:
    err = relative_error(numeric, analytic)
    # The difference of two losses carries about eps*|L| of rounding each; a
    # mismatch below that is noise, not a wrong gradient.
    noise = 8 * np.finfo(np.float64).eps * (abs(lp) + abs(lm) + 1) / (2 * h)
    return err, err <= tol or abs(numeric - analytic) <= noise


def check_coordinate(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    delta: float,
    d: int,
    c: int,
    h: float = 1e-5,
    tol: float = DEFAULT_TOL,
    loss_fn: LossFn | None = None,
    dW: np.ndarray | None = None,
) -> CoordCheck:
    """Check dL/dW[d, c] of ``loss_fn`` (default ``svm_loss``) against a centered
    difference of its loss."""
    loss_fn = loss_fn or svm_loss
    if dW is None:
        dW = loss_fn(W, X, y, reg, delta)[1]
    numeric, lp, lm = _centered(loss_fn, W, X, y, reg, delta, d, c, h)
    analytic = float(dW[d, c])
    err, ok = _status_ok(numeric, analytic, lp, lm, h, tol)
    rows, cols = straddling(W, X, y, delta, d, c, h)
    # The base margins are only needed to describe kinks, when there are some.
    base = margins(X @ W, y, delta) if rows.size else None
    kinks = [
        KinkSample(int(n), int(y[n]), int(j), float(base[n, j]), float(h * abs(X[n, d])))
        for n, j in zip(rows, cols, strict=True)
    ]
    samples = np.unique(rows)
    check = CoordCheck(d, c, numeric, analytic, err, int(samples.size), "ok", kinks=kinks)
    if ok:
        return check
    if samples.size == 0:
        check.status = "FAIL"
        return check
    if samples.size == X.shape[0]:
        # Every sample straddles (a degenerate point such as W = 0, delta = 0):
        # the mismatch is the kinks', but nothing is left to verify it on.
        check.status = "kink"
        return check
    # Judge the same coordinate on the samples whose margins all stayed on
    # one side of their kink: what remains is the analytic code's own error.
    keep = np.setdiff1d(np.arange(X.shape[0]), samples)
    Xk, yk = X[keep], y[keep]
    numeric_k, lp_k, lm_k = _centered(loss_fn, W, Xk, yk, reg, delta, d, c, h)
    analytic_k = float(loss_fn(W, Xk, yk, reg, delta)[1][d, c])
    err_k, ok_k = _status_ok(numeric_k, analytic_k, lp_k, lm_k, h, tol)
    check.kink_free_rel_error = err_k
    check.status = "kink" if ok_k else "FAIL"
    return check


def draw_coordinates(
    shape: tuple[int, int], count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` distinct (d, c) pairs drawn with ``rng`` (all of them if fewer exist)."""
    total = shape[0] * shape[1]
    flat = rng.choice(total, size=min(count, total), replace=False)
    return [(int(f // shape[1]), int(f % shape[1])) for f in flat]


def gradcheck(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    coords: Sequence[tuple[int, int]],
    *,
    reg: float = 0.0,
    delta: float = 1.0,
    h: float = 1e-5,
    tol: float = DEFAULT_TOL,
    loss_fn: LossFn | None = None,
) -> GradcheckReport:
    """Check the listed coordinates of ``loss_fn`` (default ``svm_loss``);
    W: (D, C), X: (N, D) float64, y: (N,)."""
    loss_fn = loss_fn or svm_loss
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    for d, c in coords:
        if not (0 <= d < W.shape[0] and 0 <= c < W.shape[1]):
            raise ValueError(
                f"coordinate ({d}, {c}) is outside W, which is {W.shape[0]} x {W.shape[1]}"
            )
    loss, dW = loss_fn(W, X, y, reg, delta)
    checks = [check_coordinate(W, X, y, reg, delta, d, c, h, tol, loss_fn, dW) for d, c in coords]
    distance = h * float(np.abs(X).max(initial=0.0))
    free = [ch.rel_error for ch in checks if ch.straddled == 0]
    return GradcheckReport(
        checks=checks,
        near_kink_fraction=near_kink_fraction(margins(X @ W, y, delta), distance),
        near_kink_distance=distance,
        worst_kink_free_error=max(free, default=float("nan")),
        loss=float(loss),
        tol=tol,
        h=h,
        delta=delta,
        reg=reg,
    )


CHECK_POINT_SCALE = 1e-4
"""CS231n's gradient-check point: W = 1e-4 * N(0, 1), small and random."""


def check_point(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (D, C) W at the gradient-check point."""
    return CHECK_POINT_SCALE * rng.standard_normal(shape)


@dataclass
class SweepRow:
    """How often kinks meet a check at one delta, over every coordinate of W."""

    delta: float
    near_kink_fraction: float  # of the N*(C-1) margins, within h*max|x| of 0
    straddled_fraction: float  # of the D*C coordinates, a ±h step straddles a kink
    coordinates: int  # D*C, every one examined
    straddled: int
    margins: int  # N*(C-1)
    near_kink: int


def straddle_map(W: np.ndarray, X: np.ndarray, y: np.ndarray, delta: float, h: float) -> np.ndarray:
    """(D, C) booleans: does the ±h step on W[d, c] move some margin across its kink?

    Exact, for every coordinate at once. The step moves the margins that involve
    column c by exactly ±h*|X[n, d]|: M[n, c] of the samples with y_n != c, and
    every margin of the samples with y_n == c. A margin M changes activity
    (M > 0, DESIGN.md's convention) between the two ends of the step exactly when
    -h|x| < M <= h|x|, i.e. when h|x| >= M for a positive M and h|x| > -M for the
    others. So per (n, c) two thresholds suffice: the smallest positive margin
    and the smallest -M of the rest, among the margins of n that column c moves.
    W (D, C), X (N, D), y (N,).
    """
    M = margins(X @ W, y, delta)  # (N, C); true-class entries -inf, never near
    rows = np.arange(X.shape[0])
    positive = np.where(M > 0, M, np.inf)
    rest = np.where(M <= 0, -M, np.inf)
    # Column c moves M[n, c] alone for y_n != c, and all of row n for y_n == c.
    positive[rows, y] = positive.min(axis=1)
    rest[rows, y] = rest.min(axis=1)
    reach = h * np.abs(X)  # (N, D): how far the step on row d moves sample n's margins
    out = np.zeros(W.shape, dtype=bool)
    block = max(1, 4_000_000 // max(X.shape[0], 1))  # bound the (N, block) temporaries
    for start in range(0, X.shape[1], block):
        part = reach[:, start : start + block]
        for c in range(W.shape[1]):
            hit = (part >= positive[:, c : c + 1]) | (part > rest[:, c : c + 1])
            out[start : start + block, c] = hit.any(axis=0)
    return out


def sweep_delta(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    deltas: Sequence[float],
    h: float = 1e-5,
) -> list[SweepRow]:
    """For each delta: of every one of the D*C coordinates, how many a ±h step
    straddles (exactly, see straddle_map), and how many margins lie within
    h*max|x| of their kink. W (D, C), X (N, D), y (N,)."""
    distance = h * float(np.abs(X).max(initial=0.0))
    rows = []
    for delta in deltas:
        base = margins(X @ W, y, delta)
        real = np.isfinite(base)
        near = int((np.abs(base[real]) <= distance).sum())
        hit = int(straddle_map(W, X, y, delta, h).sum())
        total = W.shape[0] * W.shape[1]
        count = int(real.sum())
        rows.append(
            SweepRow(delta, near / max(count, 1), hit / max(total, 1), total, hit, count, near)
        )
    return rows


@dataclass
class NaiveComparison:
    loss_difference: float
    gradient_difference: float  # Frobenius norm of dW_naive - dW_vectorized
    naive_seconds: float
    vectorized_seconds: float


def compare_naive(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float, delta: float
) -> NaiveComparison:
    """The CS231n notebook's check: naive and vectorized on the same batch."""
    t0 = time.perf_counter()
    loss_n, grad_n = svm_loss_naive(W, X, y, reg, delta)
    t1 = time.perf_counter()
    loss_v, grad_v = svm_loss(W, X, y, reg, delta)
    t2 = time.perf_counter()
    return NaiveComparison(
        abs(loss_n - loss_v), float(np.linalg.norm(grad_n - grad_v, "fro")), t1 - t0, t2 - t1
    )


@dataclass
class KinkCurve:
    """The loss along W[d, c] around W: the picture of a kink-straddling check.

    offsets: (P,) values of t; losses: (P,) L(W + t e_dc) - L(W).
    """

    d: int
    c: int
    h: float
    offsets: np.ndarray
    losses: np.ndarray
    kinks: list[float]  # offsets t where a straddled margin crosses 0
    numeric: float
    analytic: float
    kink_samples: list[KinkSample]


def worst_kink(checks: Sequence[CoordCheck]) -> CoordCheck | None:
    """The kink-straddling coordinate whose mismatch is largest: among those whose
    mismatch the kink explains (status ``kink``) if there are any."""
    straddled = [c for c in checks if c.status == "kink" and c.kinks]
    straddled = straddled or [c for c in checks if c.kinks]
    return max(straddled, key=lambda c: c.rel_error, default=None)


def kink_curve(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    check: CoordCheck,
    *,
    reg: float,
    delta: float,
    h: float,
    loss_fn: LossFn | None = None,
    points: int = 13,
) -> KinkCurve:
    """Sample the loss along W[d, c] over +-3h, and at every crossing of a kink.

    Between kinks the loss is linear plus a quadratic far too small to see over
    6h, so straight lines between these samples draw it: few calls suffice,
    which matters for a user's loop-based loss.
    """
    loss_fn = loss_fn or svm_loss
    d, c = check.d, check.c
    x = X[:, d]
    kinks = []
    for k in check.kinks:
        # dM[n, j]/dt is x[n, d] for the column j = c, and -x[n, d] when c is the true class.
        slope = x[k.sample] if k.cls == c else -x[k.sample]
        if slope != 0:
            kinks.append(float(-k.margin / slope))
    offsets = np.unique(np.concatenate([np.linspace(-3 * h, 3 * h, points), [-h, 0.0, h], kinks]))
    base = loss_fn(W, X, y, reg, delta)[0]
    losses = np.empty_like(offsets)
    for i, t in enumerate(offsets):
        moved = W.copy()
        moved[d, c] += t
        losses[i] = loss_fn(moved, X, y, reg, delta)[0] - base
    return KinkCurve(
        d, c, h, offsets, losses, sorted(kinks), check.numeric, check.analytic, check.kinks
    )
