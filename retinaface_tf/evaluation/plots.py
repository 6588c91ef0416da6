"""Precision-recall curves of WIDER FACE evaluations as a PNG (matplotlib, ``vis`` extra,
imported lazily with the non-interactive Agg backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from retinaface_tf.errors import PictureError
from retinaface_tf.evaluation.widerface import SETTINGS, EvaluationResult


def save_pr_curves(results: EvaluationResult | Mapping[str, EvaluationResult], path: str | os.PathLike, *,
                   title: str | None = None) -> Path:
    """Plot easy / medium / hard PR curves side by side, one line per result (legend: label and
    AP), and save them to ``path`` (PNG). ``results``: one result or ``{label: result}``."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise PictureError("PR curves need matplotlib (a core dependency): pip install matplotlib (or pass --no-plot)") from None
    if isinstance(results, EvaluationResult):
        results = {"": results}
    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    try:
        for ax, setting in zip(axes, SETTINGS):
            for label, res in results.items():
                rec, prec = res.recall[setting], res.precision[setting]
                ok = np.isfinite(rec) & np.isfinite(prec)
                ap = res.ap[setting]
                ap_text = "n/a" if math.isnan(ap) else f"{100 * ap:.2f}"
                ax.plot(rec[ok], prec[ok], lw=2, label=f"{label + ' ' if label else ''}AP {ap_text}")
            any_res = next(iter(results.values()))
            ax.set_title(f"{setting} ({any_res.num_faces[setting]} faces)")
            ax.set_xlabel("recall")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.grid(alpha=0.3)
            ax.legend(loc="lower left")
        axes[0].set_ylabel("precision")
        any_res = next(iter(results.values()))
        fig.suptitle(title or f"WIDER FACE val: {any_res.num_images} images")
        fig.tight_layout()
        from retinaface_tf.fileio import atomic_file

        try:
            with atomic_file(path, suffix=path.suffix or ".png") as tmp:  # matplotlib picks the format by suffix
                fig.savefig(tmp, dpi=100, format=(path.suffix[1:] or "png").lower())
        except OSError as exc:
            raise PictureError(f"{path}: cannot write the PR-curve image: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return path
