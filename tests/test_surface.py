"""The surface around the features (issue 29, items 5 and 7): quiet imports, names for bundled
things, nothing written for nothing, readable pictures, outputs that git ignores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd, **env):
    full = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=300)


def test_importing_the_package_hides_tensorflow_start_up_lines_unless_asked(tmp_path):
    code = "import retinaface_tf, os; from retinaface_tf import Detector; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    # oneDNN on (TensorFlow's default only on AVX-512 VNNI / AMX CPUs), so its start-up notice is printed
    quiet = _python(code, tmp_path, TF_ENABLE_ONEDNN_OPTS="1")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3"
    assert "cuda" not in quiet.stderr.lower() and "onednn" not in quiet.stderr.lower(), quiet.stderr
    loud = _python(code, tmp_path, TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")  # the user's level wins
    assert loud.stdout.strip() == "0" and "oneDNN custom operations are on" in loud.stderr


def test_bundled_model_has_a_name_from_any_folder(tmp_path, monkeypatch):
    from retinaface_tf.fileio import bundled_model, bundled_model_dir
    from retinaface_tf.models.weights import resolve_weights

    monkeypatch.chdir(tmp_path)
    path, config = resolve_weights("mobilenet025")
    assert path == bundled_model_dir() / "model.weights.h5" and config.name == "mobilenet025"
    assert bundled_model("../mobilenet025") is None and bundled_model("nothing") is None
    (tmp_path / "mobilenet025").mkdir()  # a folder of that name where the user is wins
    (tmp_path / "mobilenet025" / "model.weights.h5").write_bytes(b"x")
    assert resolve_weights("mobilenet025")[0] == Path("mobilenet025") / "model.weights.h5"
    from retinaface_tf.errors import WeightsError
    with pytest.raises(WeightsError, match="mobilenet026: no such weights file or folder"):
        resolve_weights("mobilenet026")


def test_detect_on_missing_inputs_only_writes_nothing(tmp_path, capsys, monkeypatch):
    from retinaface_tf.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["detect", "nothere.jpg"]) == 2
    assert capsys.readouterr().err.strip() == "retinaface-tf detect: error: nothere.jpg: no such file (nothing was written)"
    assert list(tmp_path.iterdir()) == []


def test_score_labels_stay_inside_and_apart():
    from retinaface_tf.vis.draw import place_labels

    boxes = np.array([[0, 0, 40, 50], [30, 0, 70, 50], [100, 100, 140, 150], [104, 101, 144, 151]], float)
    sizes = [(34, 14)] * 4
    corners = place_labels(boxes, sizes, (200, 300, 3))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 and 0 <= y1 and x2 <= 300 and y2 <= 200  # a face at the top edge keeps its label
    for i in range(4):
        for j in range(i):
            a, b = rects[i], rects[j]
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (i, j, rects)
    assert corners[2] == (100, 100 - 14 - 2)  # room above: the label sits above its box


def test_plot_run_legend_beside_the_curves_whole_epochs_one_set_of_log_labels(tmp_path):
    from retinaface_tf.vis.history import history_figure

    epochs = np.arange(7, dtype=float)
    loss = 3.0 * np.exp(-epochs / 5) + 0.5  # within one decade: minor ticks would get labels too
    history = {"epoch": epochs, "loss": loss, "bbox_loss": loss / 3, "classes_loss": loss / 2,
               "landmarks_loss": loss / 6, "learning_rate": np.full(7, 1e-3)}
    fig = history_figure(history)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the plot, never over a curve
    assert all(float(t).is_integer() for t in fig.axes[-1].get_xticks())
    assert ax.get_yscale() == "log"
    minor = [t.get_text() for t in ax.yaxis.get_minorticklabels()]
    assert all(text == "" for text in minor)
    major = [t.get_text() for t in ax.yaxis.get_majorticklabels() if t.get_text()]
    assert major and all("10^" not in t and "$" not in t for t in major)


def test_gitignore_covers_every_default_output():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "detections/x.jpg", "exported/retinaface/1",
                              "explain/a.png", "widerface_pr_curves.png", "photo_anchors.png", "runs/a/x"],
                             cwd=REPO, capture_output=True, text=True)
    assert len(ignored.stdout.split()) == 6, ignored.stdout


def test_int8_quantizer_lines_are_dropped_and_others_kept(capfd):
    from retinaface_tf import filtered_fd
    from retinaface_tf.serving.tflite import _is_quantizer_noise

    noise = b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32\n"
    with filtered_fd(2, _is_quantizer_noise):
        os.write(2, noise + b"a real warning\n" + noise)
    assert capfd.readouterr().err == "a real warning\n"


def test_detect_summary_counts_images_and_videos_apart():
    from retinaface_tf.commands.detect import _summary

    records = [{"faces": [{}, {}]}, {"image": "bad.jpg", "error": "bad.jpg: not an image"},
               {"video": {"frames_detected": 6, "faces": 150}}]
    assert _summary(records, [0, 1], [2], 0.5) == ("1/2 images, 2 faces; 1/1 video, 6 frames detected, 150 faces "
                                                   "over those frames (score > 0.5)")
    assert _summary(records[2:], [], [0], 0.3) == "1/1 video, 6 frames detected, 150 faces over those frames (score > 0.3)"
    assert _summary(records[:1], [0], [], 0.5) == "1/1 images, 2 faces (score > 0.5)"
