"""WIDER FACE precision-recall curves (``evaluate --plot``): easy / medium / hard side by side."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from retinaface_tf.evaluation.widerface import SETTINGS, EvaluationResult
from retinaface_tf.vis.writer import new_figure, save_figure


def pr_curves_figure(results: Mapping[str, EvaluationResult], *, title: str | None = None):
    """Easy / medium / hard PR curves side by side, one line per result (legend: label and AP)."""
    fig = new_figure(figsize=(15, 4.8))
    axes = fig.subplots(1, 3, sharey=True)
    any_res = next(iter(results.values()))
    for ax, setting in zip(axes, SETTINGS):
        for label, res in results.items():
            rec, prec = res.recall[setting], res.precision[setting]
            ok = np.isfinite(rec) & np.isfinite(prec)
            ap = res.ap[setting]
            ap_text = "n/a" if math.isnan(ap) else f"{100 * ap:.2f}"
            ax.plot(rec[ok], prec[ok], lw=2, label=f"{label + ' ' if label else ''}AP {ap_text}")
        ax.set_title(f"{setting} ({any_res.num_faces[setting]} faces)")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    axes[0].set_ylabel("precision")
    fig.suptitle(title or f"WIDER FACE val: {any_res.num_images} images")
    fig.tight_layout()
    return fig


def save_pr_curves(results: EvaluationResult | Mapping[str, EvaluationResult], path: str | os.PathLike, *,
                   title: str | None = None) -> Path:
    """:func:`pr_curves_figure` of one result or ``{label: result}``, saved to ``path`` in the
    format its suffix names (PNG without one)."""
    if isinstance(results, EvaluationResult):
        results = {"": results}
    path = Path(path)
    return save_figure(pr_curves_figure(results, title=title), path, format=(path.suffix[1:] or "png").lower())
