"""Nothing lost in training (issue 10, §4): a diverging run stops with an error naming the epoch
and step and keeps its last good weights and backup; a kill between the history row and the
backup leaves no gap (nor a duplicate, nor an orphan temporary) after resume; a failed start
writes nothing, so the corrected command is not refused."""

from __future__ import annotations

import csv
import json
import signal

import keras
import numpy as np
import pytest

from synthetic import make_dataset
from test_training import TINY, _run_script

from retinaface_tf.config import Config
from retinaface_tf.errors import TrainingError
from retinaface_tf.training import train


def _epochs(run):
    with open(run / "history.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_state(tmp_path):
    label, images = make_dataset(tmp_path / "data", images=8)
    cfg = Config.preset("mobilenet025").override(TINY)
    run = tmp_path / "run"
    saved = {}

    class Poison(keras.callbacks.Callback):  # weights turn NaN before step 2 of epoch 2
        def on_epoch_end(self, epoch, logs=None):
            saved[epoch] = [w.numpy().copy() for w in self.model.weights]

        def on_train_batch_begin(self, batch, logs=None):
            if len(saved) == 1 and batch == 1:
                w = self.model.trainable_weights[0]
                w.assign(np.full(w.shape, np.nan, np.float32))

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 2; stopped") as err:
        train(cfg, output_dir=run, label_file=label, images_dir=images, verbose=0, extra_callbacks=[Poison()])
    assert "\n" not in str(err.value) and str(run) in str(err.value)
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1  # backup kept
    assert _epochs(run) == [0]
    from retinaface_tf.models import build_from_config
    model = build_from_config(cfg)
    model.load_weights(str(run / "model.weights.h5"))
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    for got, want in zip(model.weights, saved[0]):  # exactly epoch 1's weights
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.slow  # 30 s; a killed run's resume: tests/test_training.py (default suite)
def test_kill_between_history_and_backup_leaves_no_gap(tmp_path):
    label, images = make_dataset(tmp_path / "data", images=8)
    run = tmp_path / "run"
    common = f"""
        import os, signal
        from retinaface_tf.config import Config
        from retinaface_tf import training
        cfg = Config.preset("mobilenet025").override({TINY!r})
    """
    first = _run_script(common + f"""
        real = training.AtomicBackupAndRestore._save_model
        def save(self):
            if self._current_epoch == 2:  # history.csv has epoch 2's row; its backup is never written
                open({str(run)!r} + "/.history.csv.orphan.tmp", "w").write("half")  # a write cut short
                os.kill(os.getpid(), signal.SIGKILL)
            real(self)
        training.AtomicBackupAndRestore._save_model = save
        training.train(cfg, output_dir={str(run)!r}, label_file={str(label)!r}, images_dir={str(images)!r}, verbose=0)
    """)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert _epochs(run) == [0, 1]  # the row of the epoch whose backup is missing
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1
    second = _run_script(common + f"""
        training.train(cfg, output_dir={str(run)!r}, label_file={str(label)!r}, images_dir={str(images)!r}, verbose=0)
    """)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _epochs(run) == [0, 1, 2]  # epoch 2 (index 1) trained again and logged once
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_failed_start_writes_nothing_and_the_corrected_retry_runs(tmp_path, capsys):
    from retinaface_tf.cli import main

    label, images = make_dataset(tmp_path / "data", images=4)
    run = tmp_path / "run"
    (tmp_path / "bad.weights.h5").write_bytes(b"not hdf5")
    base = ["train", "--label-file", str(label), "--images", str(images), "--output", str(run),
            "--set", "data.image_size=64", "--batch-size", "4", "--epochs", "1", "--quiet"]
    assert main(base + ["--weights", str(tmp_path / "bad.weights.h5")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not run.exists()
    assert main(base) == 0
    assert (run / "model.weights.h5").exists() and _epochs(run) == [0]
