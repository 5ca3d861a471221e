"""Minibatch SGD for one or many (lr, reg) configurations at once (pure numpy).

A grid of K configurations is trained as one model with K*C score columns:
every step draws one minibatch, computes all scores with one matrix product
and all gradients with another. A single run is the grid with K = 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from svmtool.core.loss import data_term
from svmtool.core.threads import SplitSteps

StepFn = Callable[[int, np.ndarray, int], None]
"""Called as ``on_step(iteration, losses, leader)`` every ``report_every`` steps;
losses: (K,); leader: the configuration with the best validation accuracy at the
latest check (-1 before the first one; always 0 for a single configuration)."""


@dataclass
class GridResult:
    """What SGD produced for K configurations.

    weights: (K, D, C); losses: (iters, K) minibatch loss before each update
    (NaN after a configuration diverged); diverged_at: (K,) step or -1.
    """

    lrs: np.ndarray
    regs: np.ndarray
    weights: np.ndarray
    losses: np.ndarray
    diverged_at: np.ndarray
    batch_size: int


def minibatches(
    n: int, batch_size: int, iters: int, rng: np.random.Generator, max_stride: int = 16
) -> Iterator[slice]:
    """Slices of rows for ``iters`` minibatches over rows already in random order.

    Shuffled epochs without copying rows: each epoch picks a stride s, views
    the rows as s interleaved columns (t, t+s, t+2s, ...), cuts every column
    into whole batches from a random offset, and visits all of them in random
    order. A strided slice of X goes to BLAS as it is, with no gather, and
    changing s between epochs changes which rows share a batch. Each epoch
    covers at least ~90% of the rows (all of them when s = 1).
    """
    top = max(1, min(max_stride, n // (batch_size * 10)))
    produced = 0
    while True:
        stride = int(rng.integers(1, top + 1))
        column = n // stride
        per_column = column // batch_size
        slots = []
        for t in range(stride):
            offset = int(rng.integers(column - per_column * batch_size + 1))
            for i in range(per_column):
                first = t + (offset + i * batch_size) * stride
                slots.append(slice(first, first + batch_size * stride, stride))
        for b in rng.permutation(len(slots)):
            if produced == iters:
                return
            yield slots[b]
            produced += 1


def _bounds(d: int) -> list[tuple[int, int]]:
    """The two fixed halves of W's rows that ``_half_step`` works on."""
    return [(0, d // 2), (d // 2, d)]


def _half_step(
    W: np.ndarray,
    c: int,
    decay: np.ndarray | float | None,
    batch: np.ndarray,
    step: np.ndarray | None,
    next_batch: np.ndarray | None,
    lo: int,
    hi: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One half (rows lo:hi) of an SGD update, in place, and what comes from it.

    W: (D, K*C), C classes per configuration; batch: (B, D); step: (B, K*C)
    or None (no update); next_batch: (B', D) or None. Updates ``W[lo:hi] <-
    W[lo:hi] * decay + batch[:, lo:hi].T @ step`` and returns those rows' sum
    of squares per configuration (K,) in float64 and their share
    ``next_batch[:, lo:hi] @ W[lo:hi]`` (B', K*C) of
    the next step's scores. The scores are the sum of the two halves' shares,
    computed the same way on one core or two: the results do not depend on
    the split (``SplitSteps.halves``).
    """
    rows = W[lo:hi]
    if step is not None:
        product = batch[:, lo:hi].T @ step
        rows *= decay
        rows += product
    if rows.shape[1] == c:
        # One configuration: one dot product, 7x faster than the per-column sums,
        # whose GIL-holding loop also held up the other core (35 us a step).
        squares = np.vdot(rows, rows).astype(np.float64).reshape(1)
    else:
        squares = np.einsum("ij,ij->j", rows, rows).reshape(-1, c).sum(axis=1, dtype=np.float64)
    share = None if next_batch is None else next_batch[:, lo:hi] @ rows
    return squares, share


def _per_column(values: np.ndarray, c: int) -> np.ndarray:
    """One factor per column of the side-by-side W: (K*C,), or a scalar when all
    K are equal (a scalar multiply is several times faster than a broadcast)."""
    if values.size and (values == values[0]).all():
        return values[0]
    return np.repeat(values, c)


class SettingError(ValueError):
    """A hyperparameter out of range; ``name`` is the argument ("lr", "batch_size")."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def check_settings(
    lrs: Sequence[float], regs: Sequence[float], delta: float, iters: int, batch_size: int
) -> None:
    """Validate hyperparameters, naming the argument and the value received."""
    for lr in lrs:
        if not (lr > 0 and np.isfinite(lr)):
            raise SettingError("lr", f"must be > 0, got {lr}")
    for reg in regs:
        if not (reg >= 0 and np.isfinite(reg)):
            raise SettingError("reg", f"must be >= 0, got {reg}")
    if not (delta >= 0 and np.isfinite(delta)):
        raise SettingError("delta", f"must be >= 0, got {delta}")
    if iters < 1:
        raise SettingError("iters", f"must be >= 1, got {iters}")
    if batch_size < 1:
        raise SettingError("batch_size", f"must be >= 1, got {batch_size}")


def sgd_grid(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    lrs: Sequence[float],
    regs: Sequence[float],
    *,
    delta: float = 1.0,
    iters: int = 1500,
    batch_size: int = 200,
    rng: np.random.Generator,
    init_scale: float = 1e-3,
    on_step: StepFn | None = None,
    report_every: int = 10,
    lr_decay: float = 1.0,
    decay_every: int = 100,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    val_checks: int = 10,
    loss: str = "hinge",
) -> GridResult:
    """Train K = len(lrs) linear SVMs side by side; configuration k uses lrs[k], regs[k].

    X: (N, D) rows in random order (see ``minibatches``), dtype float32 or
    float64; y: (N,). All configurations start from the same W (drawn once
    from ``rng``) and see the same minibatches. Every learning rate is
    multiplied by ``lr_decay`` every ``decay_every`` steps (a fixed number of
    steps rather than CS231n's per epoch, so that the schedule does not depend
    on the size of the data); 1 keeps it constant.

    With K > 1, an ``on_step`` and a validation split (X_val: (M, D), y_val:
    (M,)), the validation accuracy of every configuration is measured about
    ``val_checks`` times (each costs about as much as 3 steps), so that
    ``on_step`` can say which configuration leads.
    """
    lr = np.asarray(lrs, dtype=np.float64)
    reg = np.asarray(regs, dtype=np.float64)
    if lr.shape != reg.shape or lr.ndim != 1 or lr.size == 0:
        raise ValueError("lrs and regs must be equal-length, non-empty sequences")
    check_settings(lr.tolist(), reg.tolist(), delta, iters, batch_size)
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
    if decay_every < 1:
        raise ValueError(f"decay_every must be >= 1, got {decay_every}")
    data_loss_fn = data_term(loss)
    n, d = X.shape
    k, c = lr.size, num_classes
    dtype = X.dtype
    batch_size = min(batch_size, n)

    w0 = (init_scale * rng.standard_normal((d, c))).astype(dtype)
    # All K weight matrices side by side: (D, K*C), so one product scores them all.
    W = np.tile(w0, (1, k))
    alive = np.arange(k)  # configurations still training, in W's column order
    losses = np.full((iters, k), np.nan)
    diverged_at = np.full(k, -1)
    # The update W <- W - lr * (X_b.T @ coeff + 2 reg W) as a decay and a step,
    # one value per column of W: 2-D broadcasting over K*C columns is several
    # times faster than a (K, 1) factor broadcast over (D, K, C).
    y = np.asarray(y)
    leader = 0 if k == 1 else -1
    checking = k > 1 and on_step is not None and X_val is not None and len(X_val) > 0
    check_every = max(report_every, iters // max(val_checks, 1))

    # A huge lr or reg legitimately overflows here (the configuration then
    # diverges and is reported, see ``divergence_cause``): no warning.
    # SplitSteps splits the step's two products over the cores or not, as timing
    # the steps shows faster (svmtool.core.threads): that depends on the CPU,
    # the BLAS and the load; the results do not.
    with np.errstate(over="ignore", invalid="ignore"), SplitSteps() as cores:
        decay = (1 - 2 * lr * reg).astype(dtype)
        neg_step = (-lr).astype(dtype)
        decay_cols, step_cols = _per_column(decay[alive], c), _per_column(neg_step[alive], c)
        batches = minibatches(n, batch_size, iters, rng)
        rows = next(batches)
        batch = X[rows]
        first = (_half_step(W, c, None, batch, None, batch, lo, hi) for lo, hi in _bounds(d))
        (squares, scores), (squares2, scores2) = first
        squares, scores = squares + squares2, scores + scores2
        for it in range(iters):
            cores.next()
            labels = y[rows]
            ka = alive.size
            data_loss, coeff = data_loss_fn(scores.reshape(batch.shape[0], ka, c), labels, delta)
            # reg * sum(W^2) per configuration, the sums of squares in float64
            # from the update that made this W (or the start).
            loss = data_loss.astype(np.float64) + reg[alive] * squares
            losses[it, alive] = loss
            # -lr is folded into the small coeff before the product; W is
            # decayed after the product, just before the add, which measured
            # 20% faster on a 16-model grid than decaying it first.
            step = coeff.reshape(batch.shape[0], ka * c)
            step *= step_cols
            next_rows = next(batches, None)
            next_batch = None if next_rows is None else X[next_rows]
            # One hand-off per step: each core updates its half of W's rows and
            # computes from them its share of the next step's scores
            # (``_half_step``), so it reads only its half of the batches' columns.
            work = batch.shape[0] * (d // 2) * ka * c
            one, two = cores.halves(
                d, work, functools.partial(_half_step, W, c, decay_cols, batch, step, next_batch)
            )
            squares = one[0] + two[0]
            scores = None if next_batch is None else one[1] + two[1]

            # One sum tells whether every loss is finite (they are >= 0 or NaN),
            # in Python floats: 6x faster than numpy's sum on K values.
            bad = None
            if not math.isfinite(sum(loss.tolist())):
                bad = ~np.isfinite(loss)
            if it == iters - 1:
                final = ~np.isfinite(W.reshape(d, ka, c)).all(axis=(0, 2))
                bad = final if bad is None else bad | final
            if bad is not None and bad.any():
                # Drop diverged configurations so they cannot poison the others
                # (their columns of the squares and next scores go with them).
                diverged_at[alive[bad]] = it
                W = np.ascontiguousarray(W.reshape(d, ka, c)[:, ~bad, :].reshape(d, -1))
                squares = squares[~bad]
                if scores is not None:
                    scores = scores.reshape(-1, ka, c)[:, ~bad].reshape(scores.shape[0], -1)
                alive = alive[~bad]
                decay_cols = _per_column(decay[alive], c)
                step_cols = _per_column(neg_step[alive], c)
                if alive.size == 0:
                    break
            if lr_decay != 1 and (it + 1) % decay_every == 0:
                current = lr * lr_decay ** ((it + 1) // decay_every)
                decay = (1 - 2 * current * reg).astype(dtype)
                neg_step = (-current).astype(dtype)
                decay_cols = _per_column(decay[alive], c)
                step_cols = _per_column(neg_step[alive], c)
            if checking and (it % check_every == check_every - 1 or it == iters // 100):
                val_acc = (predict_side(W, X_val, c, cores=cores) == y_val).mean(axis=1)
                leader = int(alive[np.argmax(val_acc)])
            if on_step and (it % report_every == 0 or it == iters - 1):
                on_step(it, losses[it], leader)
            if next_batch is None:
                break
            rows, batch = next_rows, next_batch

    weights = np.zeros((k, d, c), dtype=dtype)
    weights[alive] = W.reshape(d, alive.size, c).transpose(1, 0, 2)
    return GridResult(lr, reg, weights, losses, diverged_at, batch_size)


def predict_side(
    W: np.ndarray, X: np.ndarray, c: int, chunk: int = 8192, cores: SplitSteps | None = None
) -> np.ndarray:
    """Predictions of K models side by side: W (D, K*C), X (N, D) -> (K, N).

    With ``cores`` (an entered SplitSteps), the products use its current split."""
    k = W.shape[1] // c
    matmul = np.matmul if cores is None else cores.matmul
    out = np.empty((k, X.shape[0]), dtype=np.int64)
    for s in range(0, X.shape[0], chunk):
        scores = matmul(X[s : s + chunk], W).reshape(-1, k, c)
        out[:, s : s + chunk] = scores.argmax(axis=2).T
    return out


def divergence_cause(
    lr: float,
    reg: float,
    delta: float,
    diverged_at: int,
    *,
    num_classes: int,
    batch_size: int,
    dtype: type = np.float32,
) -> str:
    """Why a configuration's loss became inf or NaN, as one of:

    'delta': the hinge terms alone overflow ``dtype`` (a batch's loss adds up
    batch_size * (C - 1) margins of about delta each); 'start': the loss was
    not finite at the initial weights, before any step; 'decay': lr * reg > 1,
    so the L2 step 1 - 2 lr reg multiplies W by more than 1 in magnitude
    every step; 'lr': none of these, the gradient step overshoots.
    """
    if delta * batch_size * max(num_classes - 1, 1) >= float(np.finfo(dtype).max):
        return "delta"
    if diverged_at == 0:
        return "start"
    if lr * reg > 1:
        return "decay"
    return "lr"


def predict(W: np.ndarray, X: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Class predictions argmax(X @ W); W: (D, C) or (K, D, C); X: (N, D).

    Returns (N,) or (K, N). Computed in row blocks to bound memory, on all
    cores (the blocks are few: probing one core would cost more than it could
    save; a slowdown of the blocks, load arriving, starts a probe).
    """
    stacked = W if W.ndim == 3 else W[None]
    k, d, c = stacked.shape
    side = np.ascontiguousarray(stacked.transpose(1, 0, 2).reshape(d, k * c)).astype(X.dtype)
    out = np.empty((k, X.shape[0]), dtype=np.int64)
    with SplitSteps(probe_first=False, window=1 << 20, max_window=1 << 20) as cores:
        for s in range(0, X.shape[0], chunk):
            cores.next()
            out[:, s : s + chunk] = predict_side(side, X[s : s + chunk], c, chunk, cores)
    return out if W.ndim == 3 else out[0]


def accuracy(W: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Fraction of rows predicted right; (K,) for stacked W, else a float."""
    if X.shape[0] == 0:
        return np.full(W.shape[0], np.nan) if W.ndim == 3 else float("nan")
    hits = (predict(W, X) == y).mean(axis=-1)
    return hits if W.ndim == 3 else float(hits)
