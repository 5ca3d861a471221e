"""Training speed, side by side: svmtool against a straightforward CS231n-style loop.

Run: python scripts/bench_train.py [--repeats 5] [--configs 16]

On CIFAR-shaped data the script generates (49,000 x 3073 rows, 10 classes):
  1. loss + gradient on 500 rows, naive against vectorized, and on 49,000 rows;
  2. the default training run (1500 iterations, batch 200) against a baseline
     written here: float64, np.random.choice with replacement, fancy-index
     gather, the textbook vectorized loss;
  3. a grid of configurations trained together against the same
     configurations trained one after another.
Every pair is timed alternately in the same run; the medians' ratios are the result.
"""

from __future__ import annotations

import argparse

import numpy as np
from benchlib import alternate, environment, fmt

from svmtool.core.loss import svm_loss, svm_loss_naive
from svmtool.core.train import sgd_grid
from svmtool.io.data import mean_image, preprocess

N_TRAIN, SHAPE, C = 49_000, (32, 32, 3), 10


def cifar_shaped(seed: int = 0):
    """uint8 images with some class structure, and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, N_TRAIN)
    templates = rng.normal(0, 30, (C, *SHAPE))
    images = np.clip(128 + templates[labels] + rng.normal(0, 50, (N_TRAIN, *SHAPE)), 0, 255)
    return images.astype(np.uint8), labels


# --- the baseline: what a CS231n student writes -----------------------------------


def textbook_svm_loss_vectorized(W, X, y, reg):
    num_train = X.shape[0]
    scores = X.dot(W)
    correct = scores[np.arange(num_train), y].reshape(-1, 1)
    margins = np.maximum(0, scores - correct + 1)
    margins[np.arange(num_train), y] = 0
    loss = margins.sum() / num_train + reg * np.sum(W * W)
    binary = margins.copy()
    binary[margins > 0] = 1
    row_sum = binary.sum(axis=1)
    binary[np.arange(num_train), y] = -row_sum
    dW = X.T.dot(binary) / num_train + 2 * reg * W
    return loss, dW


def baseline_train(X, y, lr=1e-7, reg=2.5e4, iters=1500, batch_size=200, seed=0):
    np.random.seed(seed)  # noqa: NPY002 (the legacy API, as CS231n uses it)
    num_train, dim = X.shape
    W = 0.001 * np.random.randn(dim, C)  # noqa: NPY002 (LinearClassifier.train)
    history = []
    for _ in range(iters):
        idx = np.random.choice(num_train, batch_size)  # noqa: NPY002 (with replacement)
        X_batch, y_batch = X[idx], y[idx]
        loss, grad = textbook_svm_loss_vectorized(W, X_batch, y_batch, reg)
        history.append(loss)
        W -= lr * grad
    return W, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", type=int, default=16)
    args = parser.parse_args()
    print(environment())

    images, labels = cifar_shaped()
    order = np.random.default_rng(0).permutation(N_TRAIN)
    mean = mean_image(images)
    X32 = preprocess(images, mean, order, np.float32)  # svmtool: shuffled once, float32
    y_order = labels[order]
    X64 = preprocess(images, mean, None, np.float64)  # the baseline: float64, file order
    print(f"data: {X32.shape[0]} x {X32.shape[1]} rows, {C} classes\n")

    # 1. loss + gradient
    rng = np.random.default_rng(1)
    W64 = 1e-4 * rng.standard_normal((X64.shape[1], C))
    small, ys = X64[:500], labels[:500]
    t = alternate(
        {
            "naive": lambda: svm_loss_naive(W64, small, ys, 2.5e4),
            "vectorized": lambda: svm_loss(W64, small, ys, 2.5e4),
        },
        args.repeats,
    )
    print("loss + gradient, 500 rows (float64)")
    print(f"  naive       {fmt(t['naive'])}")
    print(f"  vectorized  {fmt(t['vectorized'])}   {t['naive'] / t['vectorized']:.0f}x faster")
    W32 = W64.astype(np.float32)
    t = alternate(
        {
            "textbook64": lambda: textbook_svm_loss_vectorized(W64, X64, labels, 2.5e4),
            "svm_loss64": lambda: svm_loss(W64, X64, labels, 2.5e4),
            "svm_loss32": lambda: svm_loss(W32, X32, y_order, 2.5e4),
        },
        args.repeats,
    )
    print("loss + gradient, 49,000 rows")
    print(f"  textbook vectorized, float64  {fmt(t['textbook64'])}")
    print(f"  svm_loss, float64             {fmt(t['svm_loss64'])}")
    print(f"  svm_loss, float32             {fmt(t['svm_loss32'])}\n")

    # 2. the default training run
    def ours():
        return sgd_grid(X32, y_order, C, [1e-7], [2.5e4], rng=np.random.default_rng(0))

    batch, coeff = X32[:200].copy(), np.ones((200, C), np.float32)

    def products_only():
        # The floor: the two float32 products of every step, on one cached batch.
        for _ in range(1500):
            batch @ W32
            batch.T @ coeff

    t = alternate(
        {"baseline": lambda: baseline_train(X64, labels), "svmtool": ours, "floor": products_only},
        args.repeats,
    )
    ratio = t["baseline"] / t["svmtool"]
    print("default training run (1500 iterations, batch 200)")
    print(f"  CS231n-style baseline (float64, choice + gather)  {fmt(t['baseline'])}")
    print(f"  svmtool sgd_grid (float32, strided views)         {fmt(t['svmtool'])}")
    print(f"  floor: 1500 x the two float32 products, warm      {fmt(t['floor'])}")
    print(f"  ratio: svmtool is {ratio:.2f}x faster (target >= 5x);")
    print(f"         baseline / floor = {t['baseline'] / t['floor']:.2f}x\n")

    # 3. a grid trained together against one configuration at a time
    k = args.configs
    side = int(np.sqrt(k))
    lrs = np.geomspace(5e-8, 5e-7, side).tolist()
    regs = np.geomspace(5e3, 5e4, k // side).tolist()
    pairs = [(lr, reg) for lr in lrs for reg in regs]

    def together():
        return sgd_grid(
            X32, y_order, C, [p[0] for p in pairs], [p[1] for p in pairs],
            rng=np.random.default_rng(0),
        )  # fmt: skip

    def one_by_one():
        return [
            sgd_grid(X32, y_order, C, [lr], [reg], rng=np.random.default_rng(0))
            for lr, reg in pairs
        ]

    wide = np.tile(W32, (1, len(pairs)))
    wide_coeff = np.ones((200, wide.shape[1]), np.float32)

    def grid_products_only():
        # The floor of the grid: its two products per step, on one cached batch.
        for _ in range(1500):
            batch @ wide
            batch.T @ wide_coeff

    t = alternate(
        {"sequential": one_by_one, "together": together, "floor": grid_products_only},
        max(3, args.repeats // 2),
    )
    ratio = t["sequential"] / t["together"]
    print(f"grid of {len(pairs)} configurations (1500 iterations, batch 200 each)")
    print(f"  one after another   {fmt(t['sequential'])}")
    print(f"  together, one pass  {fmt(t['together'])}")
    print(f"  floor: 1500 x the two {wide.shape[1]}-column products, warm  {fmt(t['floor'])}")
    print(f"  ratio: together is {ratio:.2f}x faster (target >= 4x);")
    print(f"         sequential / floor = {t['sequential'] / t['floor']:.2f}x")


if __name__ == "__main__":
    main()
