"""The full-batch solver (L-BFGS) reaches the optimum; the reg path picks the best reg."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.core.loss import loss_and_gradient
from svmtool.core.solver import lbfgs, objective, reg_range, regularization_path
from svmtool.core.train import accuracy, sgd_grid
from svmtool.trainplan import TUNE_PATIENCE


def blobs(n: int, d: int, c: int, seed: int, noise: float = 1.0):
    """c Gaussian classes in d dimensions with a bias column of ones last."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d))
    y = rng.integers(0, c, n)
    X = centers[y] + noise * rng.standard_normal((n, d))
    return np.hstack([X, np.ones((n, 1))]), y


@pytest.mark.parametrize("loss", ["squared-hinge", "hinge"])
def test_lbfgs_reaches_the_optimum(loss):
    X, y = blobs(300, 8, 4, seed=0)
    reg = 0.05
    solution = lbfgs(X.astype(np.float32), y, 4, reg, loss=loss)
    assert solution.converged
    # A far tighter solve of the same problem in float64.
    tight = lbfgs(X, y, 4, reg, loss=loss, gtol=1e-12, ftol=1e-15, max_iters=20_000)
    gap = (solution.objective - tight.objective) / tight.objective
    assert 0 <= gap < 1e-3 if loss == "squared-hinge" else -1e-6 < gap < 1e-2
    # The objective it reports is the objective of the W it returns.
    assert solution.objective == pytest.approx(
        loss_and_gradient(solution.W.astype(np.float64), X, y, reg, loss=loss)[0], rel=1e-6
    )
    assert solution.history[0] >= solution.history[-1]
    assert np.all(np.diff(solution.history) <= 1e-9 * solution.history[0])  # never rises


def test_squared_hinge_optimum_has_zero_gradient_and_beats_sgd():
    X, y = blobs(400, 10, 3, seed=1)
    reg = 0.01
    solution = lbfgs(X, y, 3, reg, loss="squared-hinge", gtol=1e-8, ftol=0.0)
    _, grad = loss_and_gradient(solution.W, X, y, reg, loss="squared-hinge")
    assert np.linalg.norm(grad) < 1e-6
    sgd = sgd_grid(X, y, 3, [1e-2], [reg], iters=200, batch_size=50,
                   rng=np.random.default_rng(0), loss="squared-hinge")  # fmt: skip
    assert objective(sgd.weights[0], X, y, reg, loss="squared-hinge") > solution.objective


def test_warm_start_needs_fewer_iterations():
    X, y = blobs(300, 12, 5, seed=2)
    first = lbfgs(X, y, 5, 0.1)
    cold = lbfgs(X, y, 5, 0.03)
    warm = lbfgs(X, y, 5, 0.03, W0=first.W)
    assert warm.iterations < cold.iterations
    assert warm.objective == pytest.approx(cold.objective, rel=1e-5)


def test_reg_range_is_log_spaced_from_the_top():
    assert reg_range(10.0, 0.01) == pytest.approx([10 * 10 ** -(k / 2) for k in range(7)])
    assert reg_range(1.0, 1.0) == [1.0]
    with pytest.raises(ValueError, match="positive"):
        reg_range(0.0, 1.0)


def constructed_problem(seed: int = 0):
    """Two classes told apart by x0 - x1 (x0 is the signal plus a large noise that
    x1 measures alone), 60 pure-noise dimensions and 50 training rows. Too much
    reg keeps only x0's correlation with the label and loses the cancellation;
    too little fits the noise dimensions: the best reg is in between."""
    rng = np.random.default_rng(seed)

    def rows(n):
        y = rng.integers(0, 2, n)
        X = rng.standard_normal((n, 62))
        common = 3 * rng.standard_normal(n)
        X[:, 0] = (2 * y - 1) + common + 0.3 * rng.standard_normal(n)
        X[:, 1] = common
        return np.hstack([X, np.ones((n, 1))]), y

    return (*rows(50), *rows(1000))


def test_selection_picks_the_best_reg_found_by_exhaustive_search():
    X, y, X_val, y_val = constructed_problem()
    regs = reg_range(30.0, 1e-4)
    # The known answer: every reg solved from scratch, to high accuracy.
    exhaustive = []
    for reg in regs:
        W = lbfgs(X, y, 2, reg, gtol=1e-10, ftol=1e-15, max_iters=5000).W
        exhaustive.append(float(accuracy(W, X_val, y_val)))
    known = int(np.argmax(exhaustive))  # the first (largest) reg among ties
    assert 0 < known < len(regs) - 1  # an interior optimum: a wrong rule would miss it
    assert max(exhaustive) - min(exhaustive) > 0.05

    path = regularization_path(X, y, 2, regs, X_val, y_val, patience=len(regs))
    assert path.points[path.best].reg == regs[known]
    assert [p.reg for p in path.points] == regs  # largest first, every reg solved
    # Early stopping (train's patience, and a longer one) keeps the same answer
    # and solves fewer regs: train's stops one reg past the best.
    for patience in sorted({TUNE_PATIENCE, 2}):
        short = regularization_path(X, y, 2, regs, X_val, y_val, patience=patience)
        assert short.points[short.best].reg == regs[known]
        assert len(short.points) == known + 1 + patience
        assert short.skipped == regs[len(short.points) :]
        assert short.solution.W.shape == (63, 2)


def test_the_chosen_probe_is_polished_to_gtol_unless_the_caller_refits():
    X, y, X_val, y_val = constructed_problem()
    regs = reg_range(30.0, 1e-2)
    kw = dict(patience=1, probe_gtol=1e-2, gtol=1e-6, probe_max_iters=5)
    polished = regularization_path(X, y, 2, regs, X_val, y_val, polish=True, **kw)
    probe = regularization_path(X, y, 2, regs, X_val, y_val, polish=False, **kw)
    # The same probes rank the regs; only the saved solution differs.
    assert polished.points[polished.best].reg == probe.points[probe.best].reg
    assert probe.polish_iterations == 0 and probe.solution.grad_ratio > 1e-6
    assert polished.polish_iterations > 0
    assert polished.solution.grad_ratio < probe.solution.grad_ratio / 10
    assert polished.points[polished.best].objective < probe.points[probe.best].objective


def test_a_free_bias_is_not_penalized_and_its_scaling_changes_nothing_but_speed():
    X, y = blobs(300, 6, 3, seed=3)
    X[:, :-1] *= 100.0  # raw-pixel-sized values beside the column of ones
    y[:200] = 0  # unequal classes: the one-vs-rest problems need their biases
    reg = 50.0
    free = lbfgs(X, y, 3, reg, free_bias=True, gtol=1e-9, ftol=0.0, max_iters=3000)
    plain = lbfgs(X, y, 3, 1.0, free_bias=True, gtol=1e-9, ftol=0.0, max_iters=3000,
                  bias_scaling=1.0, W0=None)  # fmt: skip
    assert plain.W.shape == free.W.shape
    # At the optimum, the gradient of data + reg * |W without its bias row|^2 vanishes.
    _, grad = loss_and_gradient(free.W.astype(np.float64), X, y, reg, loss="squared-hinge")
    grad[-1] -= 2 * reg * free.W[-1]  # loss_and_gradient penalizes every row
    assert np.linalg.norm(grad) < 1e-5 * np.linalg.norm(X)
    assert free.objective == pytest.approx(
        objective(free.W, X, y, reg, loss="squared-hinge", free_bias=True), rel=1e-9
    )
    # Solving for the bias at another scale reaches the same optimum.
    same = lbfgs(X, y, 3, reg, free_bias=True, gtol=1e-9, ftol=0.0, max_iters=3000,
                 bias_scaling=1.0)  # fmt: skip
    assert same.objective == pytest.approx(free.objective, rel=1e-6)
    # A penalized bias of this size is pinned near 0; the free one is not.
    pinned = lbfgs(X, y, 3, reg, gtol=1e-9, ftol=0.0, max_iters=3000)
    assert np.abs(pinned.W[-1]).max() < 0.5 * np.abs(free.W[-1]).max()


def test_the_path_extends_past_an_end_of_its_range_to_the_best():
    X, y, X_val, y_val = constructed_problem()
    regs = reg_range(30.0, 1e-4)
    full = regularization_path(X, y, 2, regs, X_val, y_val, patience=len(regs))
    known = full.points[full.best].reg
    k = regs.index(known)
    # A range that stops above the best: the path goes on down to it.
    above = regs[k - 2 : k]
    stuck = regularization_path(X, y, 2, above, X_val, y_val)
    assert stuck.points[stuck.best].reg == above[-1]
    path = regularization_path(X, y, 2, above, X_val, y_val, extend=4)
    assert path.points[path.best].reg == pytest.approx(known)
    assert path.points[path.best].val_accuracy > stuck.points[stuck.best].val_accuracy
    # A range of one reg below the best: the path goes up, half a decade a step.
    below = [regs[k + 1]]
    stuck = regularization_path(X, y, 2, below, X_val, y_val)
    path = regularization_path(X, y, 2, below, X_val, y_val, extend=4)
    assert path.points[path.best].reg == pytest.approx(below[0] * 10**0.5)
    assert path.points[path.best].val_accuracy > stuck.points[0].val_accuracy
    got = [p.reg for p in path.points]
    assert got == sorted(got, reverse=True) and len(got) >= 3  # largest first, extra ones too


def test_the_objective_also_gives_the_predictions_of_the_same_pass():
    X, y = blobs(700, 9, 4, seed=3)
    X = X.astype(np.float32)
    W = np.random.default_rng(1).standard_normal((10, 4))  # blobs adds the bias column
    predictions = np.full(700, -1)
    value = objective(W, X, y, 0.1, chunk=256, predictions=predictions)
    assert value == objective(W, X, y, 0.1, chunk=256)
    assert np.array_equal(predictions, (X @ W.astype(np.float32)).argmax(axis=1))
    assert (predictions == y).mean() == accuracy(W, X, y)
