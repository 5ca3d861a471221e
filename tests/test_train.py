"""Minibatch SGD: the batch plan, the update, the grid, divergence, accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.core.loss import svm_loss
from svmtool.core.train import accuracy, minibatches, predict, sgd_grid
from svmtool.io.data import mean_image, preprocess, split, synthetic


def test_minibatches_cover_each_epoch_without_repeats():
    rng = np.random.default_rng(0)
    n, b = 10_000, 100
    seen = np.zeros(n, dtype=int)
    plan = list(minibatches(n, b, 10_000, rng))
    assert len(plan) == 10_000
    # Walk the first epoch: batches until a row repeats.
    for rows in plan:
        idx = np.arange(n)[rows]
        assert idx.size == b
        if seen[idx].any():
            break
        seen[idx] += 1
    assert seen.sum() >= 0.9 * n  # at least 90% of the rows per epoch
    assert len({rows.step for rows in plan}) > 1  # the stride changes between epochs


def test_minibatch_with_batch_equal_to_n():
    plan = list(minibatches(50, 50, 3, np.random.default_rng(0)))
    assert [np.arange(50)[r].size for r in plan] == [50, 50, 50]


def one_step_reference(W, X, y, lr, reg, delta):
    loss, grad = svm_loss(W, X, y, reg, delta)
    return W - lr * grad, loss


def test_sgd_step_equals_the_textbook_update():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 7))
    y = rng.integers(0, 3, 40)
    result = sgd_grid(
        X, y, 3, [0.1], [0.05], delta=1.0, iters=1, batch_size=40, rng=np.random.default_rng(5)
    )
    W0 = 1e-3 * np.random.default_rng(5).standard_normal((7, 3))
    expected, loss = one_step_reference(W0, X, y, 0.1, 0.05, 1.0)
    np.testing.assert_allclose(result.weights[0], expected, rtol=1e-12, atol=1e-15)
    assert result.losses[0, 0] == pytest.approx(loss, rel=1e-12)


def test_grid_equals_separate_runs():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 12))
    y = rng.integers(0, 4, 300)
    lrs, regs = [1e-2, 1e-3, 5e-2], [0.0, 0.1, 1.0]
    grid = sgd_grid(X, y, 4, lrs, regs, iters=30, batch_size=32, rng=np.random.default_rng(7))
    for k in range(3):
        alone = sgd_grid(
            X, y, 4, [lrs[k]], [regs[k]], iters=30, batch_size=32, rng=np.random.default_rng(7)
        )
        np.testing.assert_allclose(grid.weights[k], alone.weights[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(grid.losses[:, k], alone.losses[:, 0], rtol=1e-10)


def test_divergence_is_detected_and_does_not_stop_the_others():
    rng = np.random.default_rng(2)
    X = 100 * rng.standard_normal((200, 20)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    result = sgd_grid(
        X, y, 3, [1e-6, 1e3], [1.0, 1e4], iters=200, batch_size=50, rng=np.random.default_rng(0)
    )
    assert result.diverged_at[0] == -1
    assert result.diverged_at[1] >= 0
    assert np.isfinite(result.weights[0]).all()
    assert np.isfinite(result.losses[:, 0]).all()


def test_learns_synthetic_data_far_above_chance():
    data = synthetic(n_train=3000, n_test=500)
    parts = split(data, seed=0)
    mean = mean_image(data.train_images, parts.train)
    X = preprocess(data.train_images, mean, parts.train)
    y = data.train_labels[parts.train]
    Xv = preprocess(data.train_images, mean, parts.val)
    yv = data.train_labels[parts.val]
    # A small start: 400 steps of weight decay (1 - 2 lr reg = 0.995) leave 13% of
    # CS231n's 0.001 init in W, noise that would hide what this test is about.
    result = sgd_grid(
        X, y, 10, [1e-7], [2.5e4], iters=400, init_scale=1e-4, rng=np.random.default_rng(0)
    )
    val = accuracy(result.weights[0], Xv, yv)
    assert val > 0.3  # chance is 0.1
    assert result.losses[-50:, 0].mean() < result.losses[:10, 0].mean()


def test_float32_training_keeps_float32():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 5)).astype(np.float32)
    y = rng.integers(0, 2, 100)
    result = sgd_grid(X, y, 2, [1e-3], [0.0], iters=5, rng=np.random.default_rng(0))
    assert result.weights.dtype == np.float32


def test_predict_and_accuracy_stacked():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    W = rng.standard_normal((2, 4, 3))
    stacked = predict(W, X, chunk=7)
    for k in range(2):
        np.testing.assert_array_equal(stacked[k], (X @ W[k]).argmax(axis=1))
    y = stacked[1]
    assert accuracy(W[1], X, y) == 1.0
    assert accuracy(W, X, y)[1] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lrs": [-1.0]}, "lr must be > 0, got -1.0"),
        ({"regs": [-2.0]}, "reg must be >= 0, got -2.0"),
        ({"iters": 0}, "iters must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"delta": float("nan")}, "delta must be >= 0"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, message):
    X = np.ones((4, 2))
    y = np.zeros(4, dtype=int)
    args = {"lrs": [1e-3], "regs": [0.0], "iters": 2, "batch_size": 2, "delta": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sgd_grid(X, y, 2, rng=np.random.default_rng(0), **args)


def test_lr_decay_shrinks_the_steps_every_decay_every_steps():
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (400, 6)).astype(np.float64)
    y = rng.integers(0, 3, 400)

    def run(iters, lr_decay):
        return sgd_grid(X, y, 3, [0.1], [0.01], iters=iters, batch_size=100, decay_every=4,
                        rng=np.random.default_rng(1), lr_decay=lr_decay).weights[0]  # fmt: skip

    # With a decay of 1e-9 every 4 steps, every step after the 4th is ~0:
    # 12 steps end where 4 did. Without decay they go on.
    np.testing.assert_allclose(run(12, 1e-9), run(4, 1e-9), atol=1e-8)
    assert np.abs(run(12, 1.0) - run(4, 1.0)).max() > 1e-3
    np.testing.assert_array_equal(run(4, 0.5), run(4, 1.0))  # the first 4 steps at full lr
    with pytest.raises(ValueError, match="lr_decay"):
        run(4, 1.5)


@pytest.mark.parametrize("lrs", [[1e-3], [1e-3, 3e-3]])
def test_train_saves_the_objective_and_train_accuracy_of_the_saved_weights(lrs):
    # One configuration gets both from one pass over X (solver.objective's
    # predictions); a grid from two. Either way they are those of the saved W.
    from svmtool.core.solver import objective
    from svmtool.pipeline import PreparedData, TrainRequest, run_training

    rng = np.random.default_rng(2)
    X = rng.standard_normal((900, 12)).astype(np.float32)
    y = rng.integers(0, 3, 900)
    prepared = PreparedData(
        X[:800], y[:800], X[800:], y[800:], np.zeros((2, 2, 3)), ["a", "b", "c"], 0.0
    )
    outcome = run_training(TrainRequest(lrs=lrs, regs=[0.1], iters=30, batch_size=50), prepared)
    W, metrics = outcome.model.W, outcome.model.metrics
    assert metrics["objective"] == objective(W, X[:800], y[:800], 0.1)
    assert metrics["train_accuracy"] == accuracy(W, X[:800], y[:800])
    assert metrics["val_accuracy"] == accuracy(W, X[800:], y[800:])
    assert 0 < metrics["train_accuracy"] < 1
