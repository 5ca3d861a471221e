"""A full-batch solver that converges, and model selection along a regularization path.

Pure numpy. The objective ``data(X @ W) + reg * sum(W * W)`` (either loss of
``svmtool.core.loss``) is convex, so L-BFGS on the whole training set reaches
its minimum; minibatch SGD with a fixed budget of steps does not. Each
iteration costs two products with X: ``X @ p`` (the scores of the search
direction) and ``X.T @ coeff`` (the gradient). The line search moves along
``S + t * (X @ p)``, which costs O(N C) per trial point, so it is solved
almost exactly at no extra product.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from svmtool.core.loss import data_term
from svmtool.core.threads import SplitSteps

IterationFn = Callable[[int, float], None]
"""Called as ``on_iteration(iteration, objective)`` after every L-BFGS iteration."""

GTOL = 1e-4  # stop when |gradient| <= GTOL * |gradient at W = 0|
FTOL = 1e-7  # ... or when the objective fell by less than FTOL (relative) 3 times in a row
PROBE_GTOL = 1e-3  # the reg path ranks regs at this tolerance, then polishes the chosen one
MAX_ITERS = 500
MEMORY = 10


@dataclass
class Solution:
    """What L-BFGS reached.

    W: (D, C) in X's dtype; objective: the full objective at that W;
    history: (iterations + 1,) the objective at the start and after each
    iteration; grad_ratio: |gradient| / |gradient at W = 0| at the end.
    """

    W: np.ndarray
    objective: float
    iterations: int
    converged: bool
    grad_ratio: float
    history: np.ndarray


def objective(
    W: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    *,
    loss: str = "hinge",
    delta: float = 1.0,
    chunk: int = 8192,
    free_bias: bool = False,
    predictions: np.ndarray | None = None,
) -> float:
    """The full training objective ``data(X @ W) + reg * sum(W * W)``, in float64.

    W: (D, C); X: (N, D); y: (N,). Computed in row blocks (bounded memory).
    With ``free_bias`` the last row of W (the bias: X's last column is ones)
    is not in the penalty. With ``predictions`` ((N,) integers), the class
    predictions argmax(X @ W) are written there from the same scores: the
    training accuracy then costs no second pass over X.
    """
    fn = data_term(loss)
    n = X.shape[0]
    total = 0.0
    W_x = W.astype(X.dtype, copy=False)
    # The blocks' products split over the cores by our own threads (BLAS's own
    # stall when another process holds a core); a slowdown starts a probe.
    with SplitSteps(probe_first=False, window=1 << 20, max_window=1 << 20) as cores:
        for s in range(0, n, chunk):
            cores.next()
            product = cores.matmul(X[s : s + chunk], W_x)
            if predictions is not None:
                predictions[s : s + chunk] = product.argmax(axis=1)
            scores = product.astype(np.float64)
            data, _ = fn(scores, y[s : s + chunk], delta)
            total += float(data) * scores.shape[0]
    w = W.astype(np.float64, copy=False)
    if free_bias:
        w = w[:-1]
    return total / max(n, 1) + reg * float(np.vdot(w, w))


def bias_scale(X: np.ndarray, chunk: int = 8192) -> float:
    """The root mean square of X's values outside the last (bias) column.

    X: (N, D). With an unpenalized bias, L-BFGS works on the bias divided by
    this: the bias's curvature is then on the scale of the weights' (raw pixels
    of +-100 beside a column of ones are otherwise a problem conditioned 1e4
    times worse than it needs to be).
    """
    n, d = X.shape
    if d < 2 or n == 0:
        return 1.0
    total = 0.0
    for s in range(0, n, chunk):
        block = X[s : s + chunk, :-1]
        total += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
    rms = float(np.sqrt(total / (n * (d - 1))))
    return rms if np.isfinite(rms) and rms > 0 else 1.0


def _line_search(phi, f0: float, slope0: float, t0: float, trials: int = 40):
    """Minimize the convex phi(t) for t > 0, given phi(0) = f0 and phi'(0) = slope0 < 0.

    phi(t) -> (value, derivative, extra). Brackets the minimum by growing t,
    then narrows it by secant steps on the derivative (bisection when a step
    would leave the bracket), until the derivative is 1% of the initial one.
    Returns ``(t, value, extra)`` of the lowest point seen; t = 0 if none fell.
    """
    best_t, best_v, best_extra = 0.0, f0, None
    lo, d_lo = 0.0, slope0
    hi, d_hi = None, None
    t = t0
    for _ in range(trials):
        v, dv, extra = phi(t)
        if v < best_v:
            best_t, best_v, best_extra = t, v, extra
        if abs(dv) <= 0.01 * abs(slope0) and v <= f0 + 1e-4 * t * slope0:
            return t, v, extra
        if dv < 0 and v <= f0:
            lo, d_lo = t, dv
        else:
            hi, d_hi = t, dv
        if hi is None:
            t *= 4
            continue
        # Secant on the derivative, kept inside the bracket's middle 80%.
        width = hi - lo
        if d_hi is not None and d_hi > d_lo:
            t = lo - d_lo * width / (d_hi - d_lo)
        else:
            t = lo + width / 2
        if not lo + 0.1 * width <= t <= hi - 0.1 * width:
            t = lo + width / 2
    return best_t, best_v, best_extra


def lbfgs(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    reg: float,
    *,
    loss: str = "squared-hinge",
    delta: float = 1.0,
    W0: np.ndarray | None = None,
    max_iters: int = MAX_ITERS,
    gtol: float = GTOL,
    ftol: float = FTOL,
    memory: int = MEMORY,
    on_iteration: IterationFn | None = None,
    free_bias: bool = False,
    bias_scaling: float | None = None,
) -> Solution:
    """Minimize ``data(X @ W) + reg * sum(W * W)`` over W by L-BFGS on all rows.

    X: (N, D) float32 or float64; y: (N,) ints in [0, num_classes); W0: (D, C)
    warm start (zeros if None). The products with X run in X's dtype; W, the
    scores and the L-BFGS memory are float64. Stops when the gradient is
    ``gtol`` times its size at W = 0, when the objective stops falling
    (``ftol``; the hinge is not smooth, so its gradient never vanishes), or
    after ``max_iters`` iterations.

    ``free_bias``: the last row of W (X's last column is ones) is not
    penalized, as scikit-learn's lbfgs solvers treat the intercept; the solver
    then works on it divided by ``bias_scaling`` (default ``bias_scale(X)``),
    which changes the conditioning, not the optimum.
    """
    if not (reg >= 0 and np.isfinite(reg)):
        raise ValueError(f"reg must be >= 0, got {reg}")
    if max_iters < 1:
        raise ValueError(f"iters must be >= 1, got {max_iters}")
    fn = data_term(loss)
    n, d = X.shape
    dtype = X.dtype
    y = np.asarray(y)
    # The solver's variable V: W with its bias row divided by `scale`; the
    # penalty's weights per row: 1, and 0 for a free bias.
    scale = 1.0
    penalty = np.ones((d, 1))
    if free_bias:
        scale = bias_scale(X) if bias_scaling is None else float(bias_scaling)
        penalty[-1] = 0.0
    unscale = np.ones((d, 1))
    unscale[-1] = scale

    def gradient(coeff: np.ndarray, V: np.ndarray) -> np.ndarray:
        g = (X.T @ coeff.astype(dtype)).astype(np.float64)
        g *= unscale
        g += (2 * reg) * penalty * V
        return g

    def product(P: np.ndarray) -> np.ndarray:
        return (X @ (P * unscale).astype(dtype)).astype(np.float64)

    def penalized(A: np.ndarray, B: np.ndarray) -> float:
        return float(np.vdot(A, penalty * B))

    zero_coeff = fn(np.zeros((n, num_classes)), y, delta)[1]
    g_zero = float(np.linalg.norm(gradient(zero_coeff, np.zeros((d, num_classes)))))
    if W0 is None:
        W = np.zeros((d, num_classes))
        S = np.zeros((n, num_classes))
    else:
        W = np.array(W0, dtype=np.float64) / unscale
        S = product(W)
    data, coeff = fn(S, y, delta)
    f = float(data) + reg * penalized(W, W)
    g = gradient(coeff, W)
    history = [f]
    pairs: deque = deque(maxlen=memory)
    converged, flat, it = False, 0, 0
    for it in range(1, max_iters + 1):
        g_norm = float(np.linalg.norm(g))
        if g_norm <= gtol * max(g_zero, 1e-300):
            converged, it = True, it - 1
            break
        p = _direction(g, pairs)
        slope = float(np.vdot(g, p))
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            pairs.clear()
            p, slope = -g, -g_norm * g_norm
        Sp = product(p)
        ww, wp, pp = penalized(W, W), penalized(W, p), penalized(p, p)

        def phi(t: float, S=S, Sp=Sp, ww=ww, wp=wp, pp=pp):
            data_t, coeff_t = fn(S + t * Sp, y, delta)
            value = float(data_t) + reg * (ww + 2 * t * wp + t * t * pp)
            slope_t = float(np.vdot(coeff_t, Sp)) + 2 * reg * (wp + t * pp)
            return value, slope_t, coeff_t

        t0 = 1.0 if pairs else 1.0 / max(g_norm, 1e-300)
        t, f_new, coeff_new = _line_search(phi, f, slope, t0)
        if t == 0.0:
            if pairs:  # the curvature memory misled: forget it and try the gradient
                pairs.clear()
                continue
            converged, it = True, it - 1  # no decrease even along -g: at rounding level
            break
        W += t * p
        S += t * Sp
        g_new = gradient(coeff_new, W)
        step, change = t * p, g_new - g
        sy = float(np.vdot(step, change))
        if sy > 1e-12 * float(np.vdot(change, change)):
            pairs.append((step, change, 1.0 / sy))
        flat = flat + 1 if f - f_new <= ftol * max(abs(f_new), 1e-300) else 0
        f, g = f_new, g_new
        history.append(f)
        if on_iteration:
            on_iteration(it, f)
        if flat >= 3:
            converged = True
            break
    W_out = (W * unscale).astype(dtype)
    return Solution(
        W=W_out,
        objective=objective(W_out, X, y, reg, loss=loss, delta=delta, free_bias=free_bias),
        iterations=len(history) - 1,
        converged=converged,
        grad_ratio=float(np.linalg.norm(g)) / max(g_zero, 1e-300),
        history=np.asarray(history),
    )


def _direction(g: np.ndarray, pairs: deque) -> np.ndarray:
    """-H g by the L-BFGS two-loop recursion over the stored (step, change, 1/step.change)."""
    q = g.copy()
    alphas = []
    for s, yv, rho in reversed(pairs):
        a = rho * float(np.vdot(s, q))
        q -= a * yv
        alphas.append(a)
    if pairs:
        s, yv, _ = pairs[-1]
        q *= float(np.vdot(s, yv)) / float(np.vdot(yv, yv))
    for (s, yv, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * float(np.vdot(yv, q))
        q += (a - b) * s
    return -q


# --- model selection ----------------------------------------------------------------------


@dataclass
class PathPoint:
    """One reg on the path: its solution's objective, iterations, accuracies, time."""

    reg: float
    objective: float
    iterations: int
    converged: bool
    train_accuracy: float
    val_accuracy: float
    seconds: float


@dataclass
class PathResult:
    """The points solved (largest reg first), the chosen one, and its solution.

    best: index into points; skipped: regs of the range not solved because
    validation accuracy had stopped improving.
    """

    points: list[PathPoint]
    best: int
    solution: Solution
    skipped: list[float] = field(default_factory=list)
    polish_iterations: int = 0  # L-BFGS iterations from the chosen probe to ``gtol``


PointFn = Callable[[PathPoint], None]


def reg_range(top: float, bottom: float, per_decade: int = 2) -> list[float]:
    """Log-spaced regs from ``top`` down to ``bottom`` (both included), ``per_decade`` a decade."""
    if not (top > 0 and bottom > 0 and np.isfinite(top) and np.isfinite(bottom)):
        raise ValueError(f"a reg range needs positive finite ends, got {top} and {bottom}")
    hi, lo = np.log10(max(top, bottom)), np.log10(min(top, bottom))
    steps = max(int(np.ceil((hi - lo) * per_decade - 1e-9)), 0)
    return [float(v) for v in np.logspace(hi, lo, steps + 1)]


def regularization_path(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    regs: Sequence[float],
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    loss: str = "squared-hinge",
    delta: float = 1.0,
    max_iters: int = MAX_ITERS,
    patience: int = 2,
    probe_gtol: float = PROBE_GTOL,
    probe_max_iters: int | None = None,
    gtol: float = GTOL,
    extend: int = 0,
    free_bias: bool = False,
    polish: bool = True,
    on_point: PointFn | None = None,
    on_iteration: IterationFn | None = None,
) -> PathResult:
    """Choose reg on the validation split: solve from the largest reg down, each
    solution warm-starting the next, and stop once validation accuracy has not
    improved for ``patience`` points in a row.

    The points are solved to ``probe_gtol`` or ``probe_max_iters`` iterations
    (enough to rank them: validation accuracy no longer moves), and the chosen
    one is then solved on to ``gtol`` from where its probe ended; its
    accuracies are measured again there (``polish``; without it the chosen
    probe is returned as it is, for a caller that solves it again on more rows).

    ``extend``: when the best is the first or the last reg of the range, the
    path goes on past that end, one step of the range's spacing at a time
    (at most ``extend`` steps, same patience), so a range that starts too low
    or ends too high does not decide the answer. Extra regs above the range go
    first in ``points`` (largest first throughout).

    X: (N, D), y: (N,); X_val: (M, D), y_val: (M,), M >= 1. The largest regs
    are the cheapest (their optimum is near W = 0 and well conditioned) and
    each warm start begins near the next optimum, so the path costs a few
    single runs, not one per reg. Ties go to the larger reg (the simpler model).
    """
    from svmtool.core.train import accuracy

    order = sorted(set(float(r) for r in regs), reverse=True)
    if not order:
        raise ValueError("the reg range is empty")
    if X_val.shape[0] == 0:
        raise ValueError("selection needs a validation split")
    if extend < 0:
        raise ValueError(f"extend must be >= 0, got {extend}")
    step = order[1] / order[0] if len(order) > 1 else 10.0**-0.5
    scale = bias_scale(X) if free_bias else None
    probe_iters = max_iters if probe_max_iters is None else min(probe_max_iters, max_iters)

    def solve(reg: float, W0: np.ndarray | None) -> tuple[PathPoint, Solution]:
        t0 = time.perf_counter()
        solution = lbfgs(
            X, y, num_classes, reg, loss=loss, delta=delta, W0=W0, max_iters=probe_iters,
            gtol=max(probe_gtol, gtol), on_iteration=on_iteration, free_bias=free_bias,
            bias_scaling=scale,
        )  # fmt: skip
        point = PathPoint(
            reg=reg,
            objective=solution.objective,
            iterations=solution.iterations,
            converged=solution.converged,
            train_accuracy=float(accuracy(solution.W, X, y)),
            val_accuracy=float(accuracy(solution.W, X_val, y_val)),
            seconds=time.perf_counter() - t0,
        )
        if on_point:
            on_point(point)
        return point, solution

    points: list[PathPoint] = []
    solutions: dict[int, Solution] = {}  # the first point's and the best's
    best, worse, extra = -1, 0, 0
    W = None
    queue = list(order)
    while queue:
        reg = queue.pop(0)
        point, solution = solve(reg, W)
        W = solution.W
        points.append(point)
        if not solutions:
            solutions[0] = solution
        if best < 0 or point.val_accuracy > points[best].val_accuracy:
            best, worse = len(points) - 1, 0
            solutions[-1] = solution
        else:
            worse += 1
            if worse >= patience:
                break
        if not queue and 0 < best == len(points) - 1 and extra < extend:
            queue.append(reg * step)  # the best is the smallest reg yet: go on down
            extra += 1
    skipped = [r for r in order if r not in {p.reg for p in points}]
    best_solution = solutions[-1]
    if best == 0 and extend > 0:
        # The best is the largest reg: go up from it (large regs are cheap).
        reg, W, worse, added = order[0], solutions[0].W, 0, 0
        while added < extend and worse < patience:
            reg /= step
            point, solution = solve(reg, W)
            W = solution.W
            points.insert(0, point)
            best += 1
            added += 1
            if point.val_accuracy > points[best].val_accuracy:
                best, worse, best_solution = 0, 0, solution
            else:
                worse += 1
    polish_iterations = 0  # not ``polish``: that is the caller's switch, read here
    if polish and probe_gtol > gtol and not best_solution.grad_ratio <= gtol:
        chosen = points[best]
        t0 = time.perf_counter()
        final = lbfgs(
            X, y, num_classes, chosen.reg, loss=loss, delta=delta, W0=best_solution.W,
            max_iters=max_iters, gtol=gtol, on_iteration=on_iteration, free_bias=free_bias,
            bias_scaling=scale,
        )  # fmt: skip
        polish_iterations = final.iterations
        # The chosen point now describes the final model.
        points[best] = PathPoint(
            reg=chosen.reg,
            objective=final.objective,
            iterations=chosen.iterations + final.iterations,
            converged=final.converged,
            train_accuracy=float(accuracy(final.W, X, y)),
            val_accuracy=float(accuracy(final.W, X_val, y_val)),
            seconds=chosen.seconds + time.perf_counter() - t0,
        )
        best_solution = final
    return PathResult(points, best, best_solution, skipped, polish_iterations)
