"""Pictures of a classifier's errors as inline HTML / SVG: confusion matrix and reliability.

Both are drawn from counts computed here (no plotting library, nothing to load: the page stays
offline and self-contained).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warmstart.reporting.html import escape

SIDE = 240  # the reliability diagram's plot area, in pixels


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin: images, mean confidence, accuracy; and the expected calibration
    error (ECE: the image-weighted mean |accuracy - confidence| over the bins)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> Calibration:
    """Bins of the predicted class's probability ``confidence`` against being ``correct``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    safe = np.maximum(counts, 1)
    mean_confidence = np.bincount(which, confidence, minlength=bins) / safe
    accuracy = np.bincount(which, correct.astype(np.float64), minlength=bins) / safe
    ece = float(np.sum(counts * np.abs(accuracy - mean_confidence)) / max(len(confidence), 1))
    return Calibration(edges, counts, mean_confidence, accuracy, round(ece, 6))


def reliability_svg(curve: Calibration) -> str:
    """Accuracy per confidence bin as bars over the diagonal of perfect calibration."""
    pad, bars = 36, []
    for low, high, count, accuracy, confidence in zip(
            curve.edges[:-1], curve.edges[1:], curve.counts, curve.accuracy, curve.confidence,
            strict=True):
        if count:
            height = accuracy * SIDE
            bars.append(f"<rect x='{pad + low * SIDE:.1f}' y='{pad + SIDE - height:.1f}' "
                        f"width='{(high - low) * SIDE - 1:.1f}' height='{height:.1f}' "
                        f"fill='#4a78c2'><title>confidence {low:.1f}–{high:.1f}: {count} "
                        f"image(s), accuracy {accuracy:.3f}, mean confidence {confidence:.3f}"
                        "</title></rect>")
    size = SIDE + 2 * pad
    return (f"<svg width='{size}' height='{size}' role='img' font-size='11'>"
            f"<rect x='{pad}' y='{pad}' width='{SIDE}' height='{SIDE}' fill='none' "
            f"stroke='#999'/>{''.join(bars)}<line x1='{pad}' y1='{pad + SIDE}' "
            f"x2='{pad + SIDE}' y2='{pad}' stroke='#b3261e' stroke-dasharray='4'/>"
            f"{_ticks(pad)}<text x='{pad + SIDE / 2}' y='{size - 4}' text-anchor='middle'>"
            f"confidence</text><text x='8' y='{pad + SIDE / 2}' "
            f"transform='rotate(-90 8 {pad + SIDE / 2})' text-anchor='middle'>accuracy</text>"
            "</svg>")


def _ticks(pad: int) -> str:
    """0, 0.5 and 1 along both axes."""
    marks = []
    for value in (0.0, 0.5, 1.0):
        x, y = pad + value * SIDE, pad + SIDE - value * SIDE
        marks.append(f"<text x='{x:.0f}' y='{pad + SIDE + 13}' text-anchor='middle'>{value:g}"
                     f"</text><text x='{pad - 4}' y='{y + 4:.0f}' text-anchor='end'>{value:g}"
                     "</text>")
    return "".join(marks)


def confusion_table(matrix: np.ndarray, classes: list[str]) -> str:
    """Rows: actual class; columns: predicted; each cell shaded by its share of its row."""
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    head = "".join(f"<th>{escape(name)}</th>" for name in classes)
    rows = [f"<table><tr><th>actual \\ predicted</th>{head}</tr>"]
    for i, name in enumerate(classes):
        cells = "".join(_cell(int(matrix[i, j]), float(shares[i, j]), i == j)
                        for j in range(len(classes)))
        rows.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    return "".join(rows) + "</table>"


def _cell(count: int, share: float, diagonal: bool) -> str:
    colour = "24,92,34" if diagonal else "179,38,30"
    text = "#fff" if share > 0.55 else "#222"
    return (f"<td style='background:rgba({colour},{share:.2f});color:{text};text-align:right'"
            f" title='{share:.1%} of the row'>{count}</td>")


def most_confused(matrix: np.ndarray, classes: list[str], limit: int) -> list[tuple]:
    """The ``limit`` largest off-diagonal cells: (actual, predicted, count), largest first."""
    pairs = [(int(matrix[i, j]), classes[i], classes[j]) for i in range(len(classes))
             for j in range(len(classes)) if i != j and matrix[i, j] > 0]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [(actual, predicted, count) for count, actual, predicted in pairs[:limit]]
