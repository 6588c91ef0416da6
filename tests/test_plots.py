"""plot-run: history.csv (Keras CSVLogger) → one PNG; file errors are one line naming the file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_history(path, columns: dict[str, list]):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(zip(*columns.values()))


def _history(epochs=30, val=False, names=("bbox_loss", "classes_loss", "landmarks_loss")):
    """What ``retinaface-tf train``'s CSVLogger writes (loss terms named after the outputs)."""
    e = np.arange(epochs)
    rng = np.random.default_rng(0)
    box = 3.0 * np.exp(-e / 10) + 0.5 + 0.02 * rng.random(epochs)
    cls = 2.0 * np.exp(-e / 8) + 0.8
    lm = 10.0 * np.exp(-e / 12) + 1.0
    cols = {"epoch": e.tolist(), names[0]: box.tolist(), names[1]: cls.tolist(),
            names[2]: lm.tolist(), "learning_rate": np.where(e < 20, 1e-3, 1e-4).tolist(),
            "loss": (2 * box + cls + lm).tolist()}
    if val:
        cols["val_loss"] = (2 * box + cls + lm + 0.3).tolist()
        cols["val_" + names[0]] = (box + 0.1).tolist()
    return cols


def _png_size(path):
    import cv2
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return img


def test_read_history_columns_and_values(tmp_path):
    from retinaface_tf.vis.history import read_history
    cols = _history(12, val=True)
    _write_history(tmp_path / "history.csv", cols)
    h = read_history(tmp_path / "history.csv")
    assert set(h) == set(cols)
    for k, v in cols.items():
        np.testing.assert_allclose(h[k], v)


def test_read_history_tolerates_missing_optional_columns_and_blank_cells(tmp_path):
    from retinaface_tf.vis.history import read_history
    p = tmp_path / "history.csv"
    p.write_text("loss,lr\n3.5,0.001\n2.5,\n\n2.0,0.0001\n")
    h = read_history(p)
    np.testing.assert_array_equal(h["epoch"], [0, 1, 2])  # filled in when absent
    np.testing.assert_allclose(h["loss"], [3.5, 2.5, 2.0])
    assert np.isnan(h["lr"][1]) and h["lr"][2] == pytest.approx(1e-4)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "empty file"),
    ("epoch,loss,learning_rate\n", "header only"),
    ("epoch,accuracy\n0,0.5\n", "header has none of the columns"),
    ("epoch,loss\n0,1.0\n1,0.9,7\n", "line 3: 3 fields, header has 2"),
])
def test_read_history_errors_name_the_file(tmp_path, content, message):
    from retinaface_tf.errors import RetinaFaceError
    from retinaface_tf.vis.history import read_history
    p = tmp_path / "history.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(RetinaFaceError) as info:
        read_history(p)
    text = str(info.value)
    assert text.startswith(str(p)) and message in text and "\n" not in text


def test_plot_run_writes_png_with_losses_and_lr(tmp_path):
    from retinaface_tf.vis.history import plot_run
    run = tmp_path / "runs" / "mnet"
    run.mkdir(parents=True)
    _write_history(run / "history.csv", _history(40, val=True))
    out = plot_run(run)
    assert out == run / "training.png"
    img = _png_size(out)
    assert img.shape[:2] == (700, 1050)  # 10.5x7 inches at 100 dpi (legend beside the plot): losses + learning-rate panel
    # colours of the curves are there: blue box loss, orange class, green landmark, red LR
    rgb = img[..., :3][..., ::-1].reshape(-1, 3).astype(int)
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)):
        assert (np.abs(rgb - colour).sum(1) < 30).sum() > 100, colour
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_plot_run_without_lr_is_single_panel(tmp_path):
    from retinaface_tf.vis.history import plot_run
    p = tmp_path / "history.csv"
    p.write_text("epoch,loss\n0,5\n1,4\n2,3.5\n")
    out = plot_run(p, tmp_path / "sub" / "plot.png")
    assert _png_size(out).shape[:2] == (500, 1050)


def test_plot_run_cli(tmp_path, capsys):
    from retinaface_tf.cli import main
    run = tmp_path / "r"
    run.mkdir()
    assert main(["plot-run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run / "history.csv") in err and "no such file" in err
    _write_history(run / "history.csv", _history(5))
    assert main(["plot-run", str(run), "-o", str(tmp_path / "t.png")]) == 0
    assert f"wrote {tmp_path / 't.png'}" in capsys.readouterr().out
    assert _png_size(tmp_path / "t.png").shape[:2] == (700, 1050)


def test_write_png_is_atomic_and_reports_unwritable(tmp_path):
    from retinaface_tf.errors import RetinaFaceError
    from retinaface_tf.vis.writer import write_png
    img = np.full((20, 30, 3), 128, np.uint8)
    out = write_png(tmp_path / "a.png", img)
    assert _png_size(out).shape == (20, 30, 3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RetinaFaceError, match="cannot write"):
        write_png(blocker / "b.png", img)  # parent is a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "file"]


def test_all_zero_landmark_loss_keeps_log_axis(tmp_path):
    """WIDER train subsets without landmarks give landmark_loss = 0 every epoch."""
    from retinaface_tf.vis.history import history_figure, plot_history
    h = {k: np.asarray(v, float) for k, v in _history(10).items()}
    h["landmarks_loss"] = np.zeros(10)
    fig = history_figure(h)
    loss_ax, lr_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and lr_ax.get_yscale() == "linear"  # LR spans only 10x
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["total", "box", "class", "landmark: all 0"]
    h["classes_loss"][3] = -0.5  # a loss that can be negative forces a linear axis
    assert history_figure(h).axes[0].get_yscale() == "linear"
    h["learning_rate"] = np.geomspace(1e-3, 1e-6, 10)
    assert history_figure(h).axes[1].get_yscale() == "log"
    assert _png_size(plot_history(h, tmp_path / "p.png")).shape[:2] == (700, 1050)


def test_brief_names_and_ap_panel(tmp_path):
    """box_loss / class_loss / landmark_loss are read too; val_*_ap ("NA" on epochs without
    evaluation, as CSVLogger writes missing keys) gets a third panel with only the measured points."""
    from retinaface_tf.vis.history import history_figure, plot_run, read_history
    cols = _history(12, names=("box_loss", "class_loss", "landmark_loss"))
    for name, base in (("val_easy_ap", 0.8), ("val_medium_ap", 0.7), ("val_hard_ap", 0.5)):
        cols[name] = [f"{base + 0.01 * i:.3f}" if i % 4 == 3 else "NA" for i in range(12)]
    _write_history(tmp_path / "history.csv", cols)
    h = read_history(tmp_path / "history.csv")
    assert np.isnan(h["val_easy_ap"][0]) and h["val_easy_ap"][3] == pytest.approx(0.83)
    fig = history_figure(h)
    loss_ax, lr_ax, ap_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["total", "box", "class", "landmark"]
    assert [len(line.get_xdata()) for line in ap_ax.get_lines()] == [3, 3, 3]
    np.testing.assert_array_equal(ap_ax.get_lines()[0].get_xdata(), [4, 8, 12])  # epochs counted from 1
    assert _png_size(plot_run(tmp_path)).shape[:2] == (900, 1050)


def test_reads_what_keras_csvlogger_writes(tmp_path):
    """The real CSVLogger: keys fixed at the first epoch, val_* columns added as "NA" when the
    first epoch had none, AP only on evaluated epochs ("NA" elsewhere)."""
    import keras

    from retinaface_tf.vis.history import history_figure, read_history
    logger = keras.callbacks.CSVLogger(str(tmp_path / "history.csv"))
    logger.on_train_begin()
    for epoch in range(6):
        logs = {"loss": 10.0 / (epoch + 1), "bbox_loss": 2.0 / (epoch + 1), "classes_loss": 1.5,
                "landmarks_loss": 5.0 / (epoch + 1), "learning_rate": 1e-3}
        if epoch in (0, 2, 5):
            logs.update(val_easy_ap=0.5 + epoch / 20, val_medium_ap=0.4, val_hard_ap=0.2)
        logger.on_epoch_end(epoch, logs)
    logger.on_train_end()
    h = read_history(tmp_path / "history.csv")
    np.testing.assert_array_equal(h["epoch"], np.arange(6))
    np.testing.assert_allclose(h["bbox_loss"], 2.0 / np.arange(1, 7))
    np.testing.assert_allclose(h["val_easy_ap"], [0.5, np.nan, 0.6, np.nan, np.nan, 0.75])
    fig = history_figure(h)
    assert len(fig.axes) == 3
    np.testing.assert_array_equal(fig.axes[2].get_lines()[0].get_xdata(), [1, 3, 6])


def test_plot_run_compares_several_runs(tmp_path, capsys):
    """Two runs (ours and the reference's, as scripts/reference_history.py writes it) on one PNG:
    a colour per run in the loss, learning-rate and AP panels."""
    from retinaface_tf.cli import main
    from retinaface_tf.vis.history import comparison_figure, read_history

    ours, ref = tmp_path / "ours", tmp_path / "ref.csv"
    ours.mkdir()
    a = _history(10)
    a.update(val_easy_ap=[np.nan] * 4 + [0.5] + [np.nan] * 4 + [0.7], val_medium_ap=[0.4] * 10,
             val_hard_ap=[0.2] * 10)
    _write_history(ours / "history.csv", a)
    _write_history(ref, {k: v[:8] for k, v in _history(8).items()})
    assert main(["plot-run", str(ours), str(ref)]) == 2  # several runs need --output
    assert "--output PNG is required" in capsys.readouterr().err
    assert main(["plot-run", str(ours), str(ref), "--labels", "ours,reference", "-o", str(tmp_path / "c.png")]) == 0
    assert _png_size(tmp_path / "c.png").shape[:2] == (1100, 1200)
    fig = comparison_figure({"ours": read_history(ours / "history.csv"), "reference": read_history(ref)})
    loss_ax, lr_ax, ap_ax = fig.axes
    assert {line.get_color() for line in loss_ax.get_lines()} == {"tab:blue", "tab:red"}
    assert len(loss_ax.get_lines()) == 6 and len(lr_ax.get_lines()) == 2
    easy = ap_ax.get_lines()[0]
    assert easy.get_xdata().tolist() == [5, 10] and easy.get_ydata().tolist() == [0.5, 0.7]
    assert main(["plot-run", str(ours), str(ref), "--labels", "one", "-o", str(tmp_path / "d.png")]) == 2
    assert "1 labels for 2 runs" in capsys.readouterr().err


def test_reference_history_parses_the_reference_log(tmp_path):
    """scripts/reference_history.py: per-epoch means of the reference's per-iteration losses."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("reference_history", REPO / "scripts" / "reference_history.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    line = ("Epoch:{e}/2 || Epochiter: {i}/2 || Iter: {n}/4 || Loc: {loc:.4f} Cla: {cla:.4f} Landm: 0.0000 || "
            "LR: {lr:.8f} || Batchtime: 1.5 s || ETA: 0:00:01")
    log = tmp_path / "train.log"
    log.write_text("loading...\n" + "\n".join([
        line.format(e=1, i=1, n=1, loc=3.0, cla=5.0, lr=1e-3), line.format(e=1, i=2, n=2, loc=2.0, cla=4.0, lr=1e-3),
        line.format(e=2, i=1, n=3, loc=1.0, cla=2.0, lr=1e-4), line.format(e=2, i=2, n=4, loc=1.0, cla=3.0, lr=1e-4)]))
    rows, epochs = mod.parse_log(log, 2.0)
    assert epochs == 2 and sorted(rows) == [0, 1]
    assert rows[0]["bbox_loss"] == 2.5 and rows[0]["classes_loss"] == 4.5 and rows[0]["loss"] == 9.5
    assert rows[1]["learning_rate"] == 1e-4 and rows[1]["loss"] == 4.5
    for name in ("mobilenet0.25_epoch_10.pth", "mobilenet0.25_epoch_35.pth", "mobilenet0.25_Final.pth"):
        (tmp_path / name).write_bytes(b"")
    assert {e: p.name for e, p in mod.checkpoints(tmp_path, 40).items()} == {
        9: "mobilenet0.25_epoch_10.pth", 34: "mobilenet0.25_epoch_35.pth", 39: "mobilenet0.25_Final.pth"}
