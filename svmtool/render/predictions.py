"""The predictions (svmtool predict): one row per image read, and their JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from svmtool.terminal import literal, print_table, text_column


def predictions_json(model_path, results) -> dict:
    """Every image, read or not (``error`` says why not)."""
    return {
        "model": str(model_path),
        "predictions": [
            {
                "image": r.path,
                "prediction": r.label,
                "scores": [{"class": n, "score": v} for n, v in r.top],
                "error": r.error,
            }
            for r in results
        ],
    }


def render_predictions(console: Console, results, top: int) -> None:
    """The images that were read: the prediction and the ``top`` scores of each."""
    table = Table()
    text_column(table, "image")
    text_column(table, "prediction")
    text_column(table, f"top {top} scores")
    for r in results:
        if r.error is None:
            scores = ", ".join(f"{n} {s:.2f}" for n, s in r.top)
            table.add_row(literal(r.path), literal(r.label), literal(scores))
    print_table(console, table)
