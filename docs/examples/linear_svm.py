"""A student's cs231n/classifiers/linear_svm.py with two classic mistakes in it.

Try: svmtool gradcheck --loss docs/examples/linear_svm.py
"""

import numpy as np


def svm_loss_naive(W, X, y, reg):
    """Loops. W: (D, C), X: (N, D), y: (N,). Returns (loss, dW)."""
    dW = np.zeros(W.shape)
    num_classes = W.shape[1]
    num_train = X.shape[0]
    loss = 0.0
    for i in range(num_train):
        scores = X[i].dot(W)
        correct_class_score = scores[y[i]]
        for j in range(num_classes):
            if j == y[i]:
                continue
            margin = scores[j] - correct_class_score + 1  # note delta = 1
            if margin > 0:
                loss += margin
                dW[:, j] += X[i]
                dW[:, y[i]] -= X[i]
    loss /= num_train
    dW /= num_train
    loss += reg * np.sum(W * W)
    dW += reg * W  # the mistake: the gradient of reg * sum(W * W) is 2 * reg * W
    return loss, dW


def svm_loss_vectorized(W, X, y, reg):
    """No loops. Same inputs and outputs as svm_loss_naive."""
    num_train = X.shape[0]
    rows = np.arange(num_train)
    scores = X.dot(W)
    margins = np.maximum(0, scores - scores[rows, y][:, None] + 1)
    loss = margins.sum() / num_train + reg * np.sum(
        W * W
    )  # the mistake: margins[rows, y] = 0 missing
    binary = (margins > 0).astype(float)
    binary[rows, y] = -binary.sum(axis=1)
    dW = X.T.dot(binary) / num_train + 2 * reg * W
    return loss, dW
