"""The training run's callbacks: atomic checkpoints and backups, ``history.csv``, the learning
rate in the logs, a stop on a non-finite loss, and the base class of a validation callback.

Every file is written to a temporary name and renamed (:func:`~retinaface_tf.fileio.atomic_file`),
so a kill at any moment leaves the last complete state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
from keras.src.saving import saving_lib  # weights without optimizer state

from retinaface_tf.errors import TrainingError
from retinaface_tf.fileio import atomic_file, write_text_atomic
from retinaface_tf.models.weights import WEIGHTS_FILE
from retinaface_tf.training.run_folder import BEST_FILE, STATE_FILE


def save_weights_atomic(model: keras.Model, path: Path, *, include_optimizer: bool) -> None:
    """Write ``model``'s weights to ``path`` atomically (:func:`~retinaface_tf.fileio.atomic_file`).
    Without the optimizer the file is what inference loads."""
    with atomic_file(path, suffix=".weights.h5") as tmp:  # Keras picks the format by suffix
        if include_optimizer or model.optimizer is None:
            model.save_weights(str(tmp))
        else:
            saving_lib.save_weights_only(model, str(tmp), objects_to_skip=[model.optimizer])


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose every save is atomic: the model + optimizer state goes to a new
    ``epochNNNNN.weights.h5``, then ``state.json`` naming it and the epoch is replaced in one
    rename, then older files are removed. A kill at any moment leaves the last complete pair."""

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
        self._dir = Path(backup_dir)

    def _state(self):
        path = self._dir / STATE_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{path}: unreadable backup state: {exc}") from None

    def on_train_begin(self, logs=None):
        state = self._state()
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(self._dir / state["weights"]))
        self.model._initial_epoch = int(state["epoch"])
        self._current_epoch = int(state["epoch"])

    def _save_model(self):
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch{self._current_epoch:05d}.weights.h5"
        save_weights_atomic(self.model, self._dir / name, include_optimizer=True)
        write_text_atomic(self._dir / STATE_FILE, json.dumps({"epoch": self._current_epoch, "weights": name}))
        for old in self._dir.glob("epoch*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self._dir.exists():
            shutil.rmtree(self._dir, ignore_errors=True)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Ends the run with a :class:`TrainingError` naming the epoch and step at the first step whose
    loss is NaN or infinite. It raises from the step's callback, so no later callback of that
    epoch runs: ``model.weights.h5``, ``best.weights.h5``, ``history.csv`` and ``backup/`` keep
    the last good epoch (``on_train_end``, which would delete the backup, never runs)."""

    def __init__(self, output_dir):
        super().__init__()
        self.output_dir = Path(output_dir)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            if "loss" not in key:
                continue
            value = float(np.asarray(value).reshape(-1)[0])
            if not math.isfinite(value):
                raise TrainingError(
                    f"{self.output_dir}: {key} became {value} at epoch {self._epoch + 1}, step {batch + 1}; stopped. "
                    f"The last good epoch ({self._epoch}) is kept in model.weights.h5 and backup/; lower "
                    "train.learning_rate (or check the data) and resume or fine-tune from it")


class HistoryWriter(keras.callbacks.Callback):
    """``history.csv``: one row per completed epoch, the whole file rewritten atomically. It runs
    before the backup is saved, and on resume drops the rows of epochs the backup does not hold
    (they are trained again), so a kill at any moment leaves neither a gap nor a duplicate."""

    def __init__(self, path, backup_dir):
        super().__init__()
        self.path, self.backup_dir = Path(path), Path(backup_dir)
        self.columns: list[str] | None = None
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        resume_epoch = 0
        state = self.backup_dir / STATE_FILE
        if state.exists():
            resume_epoch = int(json.loads(state.read_text())["epoch"])
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                self.rows = [row for row in reader if int(row["epoch"]) < resume_epoch]
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.columns is None:
            self.columns = ["epoch", *sorted(logs)]
        row = {"epoch": epoch}
        for key in self.columns[1:]:
            value = logs.get(key, float("nan"))
            row[key] = float(np.asarray(value).reshape(-1)[0])
        self.rows.append(row)
        self._write()

    def _write(self):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns or ["epoch"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the learning rate of the epoch's last step into ``logs["learning_rate"]``
    (history.csv, TensorBoard). The optimizer's ``learning_rate`` property evaluates the schedule
    at ``iterations``, i.e. the *next* step's rate (at a decay epoch already the decayed one), so
    the schedule is evaluated at ``iterations - 1``."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            step = max(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
            value = schedule(step)
        else:
            value = optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(value))


class WeightsCheckpoint(keras.callbacks.Callback):
    """Every epoch: ``model.weights.h5`` (last); ``best.weights.h5`` when ``monitor`` improves
    (``mode`` max for AP, min for loss). Weights only, written atomically."""

    def __init__(self, output_dir, monitor: str = "loss", mode: str = "min"):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.monitor, self.mode = monitor, mode
        self.best = -math.inf if mode == "max" else math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        save_weights_atomic(self.model, self.output_dir / WEIGHTS_FILE, include_optimizer=False)
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if (value > self.best) if self.mode == "max" else (value < self.best):
            self.best = float(value)
            save_weights_atomic(self.model, self.output_dir / BEST_FILE, include_optimizer=False)


class ValidationCallback(keras.callbacks.Callback):
    """Base of a callback that measures the model on validation data at the end of epochs and
    adds its values to the logs; ``monitor`` ``(log key, "max" | "min")`` is the value
    ``best.weights.h5`` then follows (e.g. :class:`retinaface_tf.evaluation.validation.WiderValidation`)."""

    monitor: tuple[str, str] = ("val_loss", "min")
