"""A training run's history as one figure (``plot-run``), and several runs compared.

``history.csv`` is what Keras' ``CSVLogger`` writes for a training run: a header line with
``epoch``, the total ``loss``, the three terms (``bbox_loss`` / ``classes_loss`` /
``landmarks_loss`` as ``retinaface-tf train`` logs them, named after the model's outputs;
``box_loss`` / ``class_loss`` / ``landmark_loss`` are read too), ``learning_rate`` (or ``lr``),
``val_*`` losses and the WIDER ``val_{easy,medium,hard}_ap``; then one row per epoch. Any of
them may be missing.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from retinaface_tf.errors import HistoryError
from retinaface_tf.vis.writer import new_figure, save_figure

LOSS_TERMS = (("total", ("loss",), "black"), ("box", ("bbox_loss", "box_loss"), "tab:blue"),
              ("class", ("classes_loss", "class_loss"), "tab:orange"),
              ("landmark", ("landmarks_loss", "landmark_loss"), "tab:green"))
LOSS_COLUMNS = tuple(c for _, names, _ in LOSS_TERMS for c in names)
AP_COLUMNS = (("easy", "val_easy_ap"), ("medium", "val_medium_ap"), ("hard", "val_hard_ap"))
LR_COLUMNS = ("learning_rate", "lr")


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a Keras ``CSVLogger`` file into ``{column: float64 [E]}`` (non-numeric cells and
    empty cells become NaN). ``epoch`` is filled with 0..E-1 if absent.

    Raises :class:`HistoryError` naming the file when it is missing, empty, has no data rows,
    a row of the wrong width, or no loss / learning-rate column."""
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path}: no such file" + (" (is a directory)" if path.is_dir() else ""))
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except csv.Error as exc:
        raise HistoryError(f"{path}: malformed CSV: {exc}") from None
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows:
        raise HistoryError(f"{path}: empty file (expected a CSVLogger header and one row per epoch)")
    header = [c.strip() for c in rows[0][1]]
    if len(rows) < 2:
        raise HistoryError(f"{path}: header only, no epochs recorded yet")
    if not any(c in header for c in LOSS_COLUMNS + LR_COLUMNS):
        raise HistoryError(f"{path}: line {rows[0][0]}: header has none of the columns "
                           f"{', '.join(LOSS_COLUMNS + LR_COLUMNS)} (got {', '.join(header) or 'nothing'})")
    columns: dict[str, list[float]] = {c: [] for c in header}
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise HistoryError(f"{path}: line {line}: {len(row)} fields, header has {len(header)}")
        for name, cell in zip(header, row):
            try:
                columns[name].append(float(cell))
            except ValueError:
                columns[name].append(math.nan)
    out = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    if "epoch" not in out:
        out["epoch"] = np.arange(len(rows) - 1, dtype=np.float64)
    return out


def plot_history(history: dict[str, np.ndarray], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw :func:`history_figure` and save it as one PNG atomically. Returns the path."""
    return save_figure(history_figure(history, title=title), path)


def _finite(history, name):
    values = history.get(name)
    return values if values is not None and np.isfinite(values).any() else None


def _tidy_axes(axes, legends) -> None:
    """Whole epochs on the shared x axis; on a log y axis one set of plain tick labels (1, 2, 5 per
    decade; no second set from the minor ticks); legends outside the plotting area, on the right,
    so they never cover a curve."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in axes:
        if a.get_yscale() == "log":
            a.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            a.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            a.yaxis.set_minor_formatter(NullFormatter())
    for a, kwargs in legends:
        a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def history_figure(history: dict[str, np.ndarray], *, title: str | None = None):
    """A matplotlib ``Figure``: the loss curves (total, box, class, landmark; ``val_*`` dashed,
    same colour) on a log axis (linear if any drawn loss is < 0), then the learning rate and the
    WIDER val AP (easy / medium / hard) on panels below when those columns exist. Columns that
    are absent or all-NaN are skipped."""
    epochs = history["epoch"] + 1  # CSVLogger counts epochs from 0
    lr_name = next((c for c in LR_COLUMNS if _finite(history, c) is not None), None)
    aps = [(label, history[c]) for label, c in AP_COLUMNS if _finite(history, c) is not None]
    ratios = [3] + [1] * bool(lr_name) + [1.2] * bool(aps)
    fig = new_figure(figsize=(10.5, 5 + 2 * (len(ratios) - 1)))
    legends = []
    axes = list(np.atleast_1d(fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios)))
    ax = axes[0]
    drawn = 0
    positive = True
    for label, names, colour in LOSS_TERMS:
        for prefix, style, suffix in (("", "-", ""), ("val_", "--", " (val)")):
            name = next((prefix + n for n in names if _finite(history, prefix + n) is not None), None)
            if name is None:
                continue
            values = history[name]
            text = label + suffix
            if np.nanmax(np.abs(values)) == 0:
                text += ": all 0"  # e.g. the landmark loss on data without landmarks; not drawn on a log axis
            else:
                positive &= bool(np.nanmin(values) > 0)
            ax.plot(epochs, values, style, color=colour, label=text, linewidth=1.5 if label == "total" else 1.2)
            drawn += 1
    if drawn:
        if positive:
            ax.set_yscale("log")
        legends.append((ax, {"fontsize": 9}))
    else:
        ax.text(0.5, 0.5, "no loss columns in history.csv", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "training losses")
    panel = 1
    if lr_name:
        lax = axes[panel]
        panel += 1
        lr = history[lr_name]
        lax.plot(epochs, lr, color="tab:red")
        lax.set_ylabel("learning rate")
        if np.nanmin(lr) > 0 and np.nanmax(lr) / np.nanmin(lr) > 20:
            lax.set_yscale("log")
        lax.grid(True, which="both", alpha=0.3)
    if aps:
        aax = axes[panel]
        for (label, values), colour in zip(aps, ("tab:green", "tab:olive", "tab:purple")):
            seen = np.isfinite(values)  # AP is computed every N epochs only
            aax.plot(epochs[seen], values[seen], "o-", color=colour, label=label, markersize=3)
        aax.set_ylabel("WIDER val AP")
        legends.append((aax, {"fontsize": 9}))
        aax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch")
    _tidy_axes(axes, legends)
    fig.tight_layout()
    return fig


def comparison_figure(histories: dict[str, dict[str, np.ndarray]], *, title: str | None = None):
    """Several runs on one figure, a colour per run: total / box / class loss (solid / dashed /
    dotted), the learning rate, and WIDER val AP (easy / medium / hard: circle / square /
    triangle markers) at the epochs where it was measured."""
    colours = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")
    fig = new_figure(figsize=(12, 11))
    legends = []
    ax, lax, aax = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1, 2])
    for (label, history), colour in zip(histories.items(), colours * 4):
        epochs = history["epoch"] + 1
        for (term, names, _), style in zip(LOSS_TERMS[:3], ("-", "--", ":")):
            name = next((n for n in names if _finite(history, n) is not None), None)
            if name is not None and np.nanmin(history[name]) > 0:
                ax.plot(epochs, history[name], style, color=colour, label=f"{label}: {term}")
        lr_name = next((c for c in LR_COLUMNS if _finite(history, c) is not None), None)
        if lr_name:
            lax.plot(epochs, history[lr_name], color=colour, label=label)
        for (setting, column), marker in zip(AP_COLUMNS, ("o", "s", "^")):
            if _finite(history, column) is not None:
                seen = np.isfinite(history[column])
                aax.plot(epochs[seen], history[column][seen], marker + "-", color=colour, markersize=4,
                         label=f"{label}: {setting}")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    legends.append((ax, {"fontsize": 8}))
    ax.set_title(title or "training runs compared")
    lax.set_ylabel("learning rate")
    rates = np.concatenate([line.get_ydata() for line in lax.get_lines()] or [np.ones(1)])
    if rates.min() > 0 and rates.max() / rates.min() > 20:
        lax.set_yscale("log")
    aax.set_ylabel("WIDER val AP")
    if aax.get_lines():
        legends.append((aax, {"fontsize": 8}))
    else:
        aax.text(0.5, 0.5, "no val AP measured", ha="center", va="center", transform=aax.transAxes)
    aax.set_xlabel("epoch")
    for a in (ax, lax, aax):
        a.grid(True, which="both", alpha=0.3)
    _tidy_axes([ax, lax, aax], legends)
    fig.tight_layout()
    return fig


def _history_path(run: str | os.PathLike) -> Path:
    run = Path(run)
    return run / "history.csv" if run.is_dir() or not run.suffix else run


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """``runs/NAME`` → ``runs/NAME/training.png`` (or ``output``) from ``runs/NAME/history.csv``."""
    csv_path = _history_path(run_dir)
    history = read_history(csv_path)
    target = Path(output) if output else csv_path.parent / "training.png"
    return plot_history(history, target, title=f"{csv_path.parent.name or csv_path.name}: "
                                               f"{len(history['epoch'])} epochs")


def plot_runs(runs, output: str | os.PathLike, *, labels=None) -> Path:
    """Several runs (folders or history.csv files) compared on one PNG (:func:`comparison_figure`);
    ``labels`` default to the run folders' names."""
    paths = [_history_path(r) for r in runs]
    labels = list(labels) if labels else [p.parent.name or p.name for p in paths]
    if len(labels) != len(paths):
        raise HistoryError(f"{len(labels)} labels for {len(paths)} runs")
    histories = {label: read_history(p) for label, p in zip(labels, paths)}
    return save_figure(comparison_figure(histories), output)
