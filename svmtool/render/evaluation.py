"""The evaluation (svmtool evaluate): accuracy, per-class table, confusion matrix; its JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from svmtool.terminal import fits, fmt, literal, number_column, print_table, text_column

MATRIX_MAX_CLASSES = 20  # above this a confusion matrix is unreadable on a terminal
CONFUSED_PAIRS = 20


def most_confused(confusion, top: int) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells as (true, predicted, count), largest first."""
    import numpy as np

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    rows, cols = np.unravel_index(flat, off.shape)
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(rows, cols, strict=True) if off[i, j]]


def evaluation_json(result, names: list[str]) -> dict:
    return {
        "split": result.split,
        "count": result.count,
        "available": result.available,
        "accuracy": result.accuracy,
        "per_class": dict(zip(names, result.per_class, strict=True)),
        "class_names": names,
        "confusion": result.confusion.tolist(),
    }


def render_evaluation(console: Console, result, names: list[str]) -> None:
    """The accuracy line, the per-class table and the confusion matrix (or, when it
    does not fit, the most confused pairs)."""
    split = result.split
    if split != "test":
        scope = ""
    elif result.count == result.available:
        scope = " (the whole test set)"
    else:
        scope = f" (the first {result.count} of {result.available} test images)"
    console.print(f"{split} accuracy: {result.accuracy:.4f} on {result.count} images{scope}")
    per = Table(title="per-class accuracy")
    text_column(per, "class")
    number_column(per, "accuracy")
    for name, acc in zip(names, result.per_class, strict=True):
        per.add_row(literal(name), fmt(acc))
    print_table(console, per)
    conf = Table(title="confusion matrix (rows: true, columns: predicted)")
    text_column(conf, "")
    for i in range(len(names)):
        number_column(conf, str(i))
    for i, row in enumerate(result.confusion):
        conf.add_row(literal(f"{i} {names[i]}"), *[str(v) for v in row])
    if len(names) <= MATRIX_MAX_CLASSES and fits(console, conf):
        print_table(console, conf)
        return
    why = (
        f"{len(names)} classes"
        if len(names) > MATRIX_MAX_CLASSES
        else f"a {console.width}-column terminal is too narrow"
    )
    pairs = most_confused(result.confusion, CONFUSED_PAIRS)
    conf = Table(title=f"the {len(pairs)} most confused pairs")
    text_column(conf, "true class")
    text_column(conf, "predicted as")
    number_column(conf, "images")
    number_column(conf, "share")
    totals = result.confusion.sum(axis=1)
    for i, j, count in pairs:
        conf.add_row(literal(names[i]), literal(names[j]), str(count), f"{count / totals[i]:.1%}")
    print_table(console, conf)
    console.print(
        f"({why}: the whole {len(names)} x {len(names)} confusion matrix is in the output"
        " of --json)"
    )
