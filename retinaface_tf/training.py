"""Training with ``model.fit`` under ``tf.distribute``: the reference recipe, resumable.

- Strategy: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster, else
  ``MirroredStrategy`` over every GPU (one device, or the CPU, when that is all there is).
- Optimizer: :class:`TorchSGD`, PyTorch's SGD update exactly (``buf = m·buf + g + wd·w``;
  ``w -= lr·buf``): coupled weight decay on every trainable variable, like the reference's
  ``optim.SGD(net.parameters(), weight_decay=5e-4)``. (Keras' ``l2(x)`` regulariser adds
  ``x·w²``, i.e. twice PyTorch's ``weight_decay=x``; Keras' ``SGD(weight_decay=)`` is decoupled.
  Neither is the reference.)
- Schedule: :class:`StepDecay`, ``lr · factor^k`` after each decay epoch, optional linear
  warm-up from 1e-6 (the reference's ``adjust_learning_rate``); the base rate scales with the
  global batch (``lr · global_batch / 32``).
- Output folder ``runs/NAME``: ``config.yaml`` + ``run.yaml`` (what the run is), ``model.weights.h5``
  (last epoch, weights only), ``best.weights.h5``, ``history.csv``, ``logs/`` (TensorBoard),
  ``backup/`` (model + optimizer state + epoch, written atomically every epoch; a killed run
  resumes from its last completed epoch; removed when the run completes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml

from retinaface_tf.config import Config, TrainConfig
from retinaface_tf.errors import ConfigError, TrainingError
from retinaface_tf.fileio import atomic_file, write_text_atomic

REFERENCE_BATCH = 32  # the batch the reference's learning rate 1e-3 belongs to


# ---------------------------------------------------------------------- optimizer and schedule
@keras.saving.register_keras_serializable(package="retinaface_tf")
class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum and *coupled* weight decay, PyTorch's update rule exactly:
    ``g' = g + weight_decay·w``; ``buf = momentum·buf + g'``; ``w -= lr·buf``."""

    def __init__(self, learning_rate=TrainConfig.learning_rate, momentum: float = TrainConfig.momentum,
                 coupled_weight_decay: float = TrainConfig.weight_decay, name: str = "torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=False, name=name, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        g = keras.ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            g = keras.ops.add(g, keras.ops.multiply(variable, keras.ops.cast(self.coupled_weight_decay, variable.dtype)))
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, keras.ops.add(keras.ops.multiply(buf, keras.ops.cast(self.momentum, variable.dtype)), g))
            self.assign_sub(variable, keras.ops.multiply(buf, lr))
        else:
            self.assign_sub(variable, keras.ops.multiply(g, lr))

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("nesterov", None)
        return {**cfg, "coupled_weight_decay": self.coupled_weight_decay}


@keras.saving.register_keras_serializable(package="retinaface_tf")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``base · factor^(number of decay epochs passed)``, with an optional linear warm-up from
    ``warmup_start`` over ``warmup_epochs`` (the reference's ``adjust_learning_rate``)."""

    def __init__(self, base_learning_rate: float, steps_per_epoch: int, decay_epochs=TrainConfig.decay_epochs,
                 decay_factor: float = TrainConfig.decay_factor, warmup_epochs: int = TrainConfig.warmup_epochs,
                 warmup_start: float = 1e-6):
        self.base_learning_rate = float(base_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        boundaries = tf.constant([e * self.steps_per_epoch for e in self.decay_epochs] or [math.inf], tf.float32)
        k = tf.reduce_sum(tf.cast(step >= boundaries, tf.float32))
        lr = self.base_learning_rate * tf.pow(self.decay_factor, k)
        if self.warmup_epochs > 0:
            warm_steps = float(self.warmup_epochs * self.steps_per_epoch)
            warm = self.warmup_start + (self.base_learning_rate - self.warmup_start) * step / warm_steps
            lr = tf.where(step < warm_steps, warm, lr)
        return lr

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "decay_epochs": list(self.decay_epochs), "decay_factor": self.decay_factor,
                "warmup_epochs": self.warmup_epochs, "warmup_start": self.warmup_start}


def make_optimizer(*, learning_rate: float, momentum: float, weight_decay: float, steps_per_epoch: int,
                   decay_epochs, decay_factor: float, warmup_epochs: int, global_batch: int,
                   mixed_precision: bool = False):
    """The reference optimizer for a global batch (learning rate scaled by ``global_batch / 32``)."""
    schedule = StepDecay(learning_rate * global_batch / REFERENCE_BATCH, steps_per_epoch, decay_epochs,
                         decay_factor, warmup_epochs)
    opt = TorchSGD(schedule, momentum=momentum, coupled_weight_decay=weight_decay)
    if mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


# ---------------------------------------------------------------------- strategy
def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster, else MirroredStrategy
    over all GPUs (or the single CPU/GPU device)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if tf_config.get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy([gpus[0].name if gpus else "/cpu:0"])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# ---------------------------------------------------------------------- callbacks
def save_weights_atomic(model: keras.Model, path: Path, *, include_optimizer: bool) -> None:
    """Write ``model``'s weights to ``path`` atomically (:func:`~retinaface_tf.fileio.atomic_file`).
    Without the optimizer the file is what inference loads."""
    with atomic_file(path, suffix=".weights.h5") as tmp:  # Keras picks the format by suffix
        if include_optimizer or model.optimizer is None:
            model.save_weights(str(tmp))
        else:
            from keras.src.saving import saving_lib  # weights without optimizer state
            saving_lib.save_weights_only(model, str(tmp), objects_to_skip=[model.optimizer])


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose every save is atomic: the model + optimizer state goes to a new
    ``epochNNNNN.weights.h5``, then ``state.json`` naming it and the epoch is replaced in one
    rename, then older files are removed. A kill at any moment leaves the last complete pair."""

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
        self._dir = Path(backup_dir)

    def _state(self):
        path = self._dir / "state.json"
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
        write_text_atomic(self._dir / "state.json", json.dumps({"epoch": self._current_epoch, "weights": name}))
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
        state = self.backup_dir / "state.json"
        if state.exists():
            resume_epoch = int(json.loads(state.read_text())["epoch"])
        if self.path.exists():
            import csv

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
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns or ["epoch"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the epoch's last learning rate into ``logs["learning_rate"]`` (history.csv, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the property evaluates the schedule at the current iteration
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


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
        save_weights_atomic(self.model, self.output_dir / "model.weights.h5", include_optimizer=False)
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if (value > self.best) if self.mode == "max" else (value < self.best):
            self.best = float(value)
            save_weights_atomic(self.model, self.output_dir / "best.weights.h5", include_optimizer=False)


class WiderValidation(keras.callbacks.Callback):
    """WIDER FACE AP of the current weights on a val folder at the end of chosen epochs; adds
    ``val_easy_ap``, ``val_medium_ap``, ``val_hard_ap`` to the logs."""

    def __init__(self, images_dir, ground_truth_dir, *, every: int, config: Config, max_images: int | None = None):
        super().__init__()
        from retinaface_tf.evaluation.widerface import list_images, load_ground_truth

        self.every = max(1, int(every))
        self.config = config
        self.ground_truth = load_ground_truth(ground_truth_dir)
        images = list_images(images_dir, self.ground_truth)
        if max_images:
            images = dict(list(images.items())[:max_images])
        self.images = images
        self._detector = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            # CSVLogger fixes its columns at the first epoch: log NaN so the AP columns exist
            if logs is not None:
                logs.update({f"val_{s}_ap": float("nan") for s in ("easy", "medium", "hard")})
            return
        from retinaface_tf.evaluation.tta import predict_images
        from retinaface_tf.evaluation.widerface import evaluate_predictions
        from retinaface_tf.inference import Detector

        if self._detector is None:  # holds the model itself: later epochs reuse the traced graph
            self._detector = Detector(model=self.model, config=self.config, score_threshold=0.02)
        preds, _ = predict_images(self._detector, self.images, progress=False)
        result = evaluate_predictions(preds, self.ground_truth)
        if logs is not None:
            for setting, ap in result.ap.items():
                logs[f"val_{setting}_ap"] = float(ap)
        print(f"\nepoch {epoch + 1}: WIDER val AP easy {result.ap['easy']:.4f} medium {result.ap['medium']:.4f} "
              f"hard {result.ap['hard']:.4f} ({result.num_images} images)", file=sys.stderr)


# ---------------------------------------------------------------------- run folder
def _run_identity(config: Config, data: dict) -> dict:
    return {"config": config.to_dict(), "data": data}


def prepare_output(output_dir: Path, config: Config, data: dict, *, write: bool = True) -> bool:
    """Create or re-open the run folder. Returns True when resuming an interrupted run.
    Raises :class:`TrainingError` if the folder holds a different or a finished run. With
    ``write=False`` only the checks run (a new run's ``run.yaml`` is written once everything
    that can fail at start has passed, so a failed start leaves nothing behind). Resuming removes
    the temporary files a kill can leave from an atomic write."""
    run_file = output_dir / "run.yaml"
    identity = _run_identity(config, data)
    if run_file.exists():
        try:
            existing = _current_names(yaml.safe_load(run_file.read_text()), str(run_file))
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingError(f"{run_file}: unreadable run description: {exc}") from None
        if existing != identity:
            diff = _first_difference(existing, identity)
            raise TrainingError(f"{output_dir}: holds a different run ({diff}); choose another --output")
        if not (output_dir / "backup" / "state.json").exists():
            if (output_dir / "model.weights.h5").exists():
                raise TrainingError(f"{output_dir}: holds a finished run; choose another --output")
            return False
        if write:
            _remove_orphan_temporaries(output_dir)
        return True
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TrainingError(f"{output_dir}: folder is not empty and holds no run.yaml; choose another --output")
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"{output_dir}: exists and is not a folder; choose another --output")
    if write:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output_dir / "config.yaml")
        write_text_atomic(run_file, yaml.safe_dump(identity, sort_keys=False))
    return False


def _current_names(identity, source: str):
    """A saved run description with its config read back through :class:`Config`, so a field
    renamed since (``data.rgb_mean`` → ``data.bgr_mean``) compares under its current name."""
    if isinstance(identity, dict) and isinstance(identity.get("config"), dict):
        try:
            return {**identity, "config": Config.from_dict(identity["config"], source=source).to_dict()}
        except ConfigError:
            pass  # compared as it is: the difference is reported
    return identity


RUN_FILES = ("run.yaml", "config.yaml", "model.weights.h5", "best.weights.h5", "history.csv", "state.json")


def _remove_orphan_temporaries(output_dir: Path) -> None:
    """The hidden ``.NAME.XXXX`` files :func:`~retinaface_tf.fileio.atomic_file` leaves when killed."""
    for folder in (output_dir, output_dir / "backup"):
        if folder.is_dir():
            for item in folder.iterdir():
                if item.is_file() and item.name.startswith(tuple(f".{n}." for n in RUN_FILES) + (".epoch",)):
                    item.unlink(missing_ok=True)


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"


# ---------------------------------------------------------------------- training
def _load_keras_weights(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise TrainingError(f"{path}: cannot load these weights into {model.name}: {reason}") from None


def load_initial_weights(model: keras.Model, *, weights=None, backbone_weights=None) -> str:
    """Full model weights (fine-tuning; .weights.h5, model folder or reference .pth) or backbone
    weights (converted .weights.h5 or the reference ImageNet .tar). Returns a description."""
    from retinaface_tf.convert.convert import load_reference_backbone, load_reference_weights
    from retinaface_tf.inference import resolve_weights

    if weights is not None:
        path, _ = resolve_weights(weights)
        if path.suffix in (".pth", ".pt", ".tar"):
            load_reference_weights(model, path)
        else:
            _load_keras_weights(model, path)
        return f"full model from {path}"
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.exists():
            raise TrainingError(f"{path}: backbone weights not found")
        body = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        if path.is_dir():
            path = path / "backbone.weights.h5"
        if path.suffix in (".pth", ".pt", ".tar"):
            load_reference_backbone(body, path)
        else:
            _load_keras_weights(body, path)
        return f"backbone from {path}"
    return "from scratch"


@keras.saving.register_keras_serializable(package="retinaface_tf")
class DistributedTrainingModel(keras.Model):
    """The functional network, with one fix for ``fit`` under MultiWorkerMirroredStrategy.

    Keras 3 (keras-team/keras#20585, open) fails twice on the way into the first step under
    MultiWorkerMirroredStrategy: it builds the model from a data batch MEAN-reduced across
    workers (``Attempt to convert a value (PerReplica...)``), and it reduces each step's scalar
    logs with ``strategy.reduce("MEAN", v, axis=0)``, which has no axis 0. Building needs only
    shapes and dtypes, so this model builds from the first local replica's batch; and its
    train step returns each log with a length-1 axis, which that reduce then averages over the
    workers into a scalar. Every other strategy runs plain Keras.
    """

    def _multi_worker(self) -> bool:
        return isinstance(self._distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def train_step(self, data):
        logs = super().train_step(data)
        if self._multi_worker():
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not self._multi_worker():
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            break
        local = tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
            batch)
        with strategy.scope():
            self._symbolic_build(data_batch=local)


def build_training_model(config: Config, *, steps_per_epoch: int, global_batch: int) -> keras.Model:
    """The network compiled with the reference optimizer, schedule and MultiBoxLoss (call inside
    ``strategy.scope()``). Keras logs the unweighted terms as ``bbox_loss``, ``classes_loss``,
    ``landmarks_loss`` beside the weighted total ``loss``."""
    from retinaface_tf.losses import MultiBoxLoss
    from retinaface_tf.models import build_from_config

    t = config.train
    model = build_from_config(config, model_class=DistributedTrainingModel)
    optimizer = make_optimizer(learning_rate=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
                               steps_per_epoch=steps_per_epoch, decay_epochs=t.decay_epochs,
                               decay_factor=t.decay_factor, warmup_epochs=t.warmup_epochs,
                               global_batch=global_batch, mixed_precision=t.mixed_precision)
    loss = MultiBoxLoss(neg_pos_ratio=config.loss.neg_pos_ratio, loc_weight=config.loss.loc_weight,
                        landmark_weight=config.loss.landmark_weight)
    model.compile(optimizer=optimizer, **loss.compile_kwargs())
    return model


def train(config: Config, *, output_dir, label_file=None, images_dir=None, tfrecord_pattern=None,
          weights=None, backbone_weights=None, val_images=None, val_ground_truth=None, val_every: int = 0,
          val_max_images: int | None = None, steps_per_epoch: int | None = None, verbose: int | str = "auto",
          extra_callbacks=(), strategy: tf.distribute.Strategy | None = None):
    """Train (or resume) a run into ``output_dir``. Every check that can fail runs before the
    first step: config, output folder, labels, images, initial weights. Returns the Keras
    ``History``."""
    from retinaface_tf.data.pipeline import build_dataset, dataset_kwargs
    from retinaface_tf.data.widerface import check_images, read_annotations

    t = config.train
    output_dir = Path(output_dir)
    strategy = strategy or make_strategy()
    chief = is_chief(strategy)
    global_batch = t.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise TrainingError(f"train.batch_size={global_batch} is not divisible by the "
                            f"{strategy.num_replicas_in_sync} replicas")
    data_desc = {"label_file": os.fspath(label_file) if label_file else None,
                 "images": os.fspath(images_dir) if images_dir else None,
                 "tfrecords": tfrecord_pattern if tfrecord_pattern else None,
                 "weights": os.fspath(weights) if weights else None,
                 "backbone_weights": os.fspath(backbone_weights) if backbone_weights else None}

    # Data first: a bad label file or missing images must fail before anything is written.
    if tfrecord_pattern is None:
        if label_file is None or images_dir is None:
            raise TrainingError("give --label-file and --images (or --tfrecords)")
        annotations = read_annotations(label_file)
        num_images = len(annotations.images)
        if num_images == 0:
            raise TrainingError(f"{label_file}: dataset is empty (no image with a usable face)")
        check_images(annotations, images_dir)  # every missing image named, before anything is written
        source = {"annotations": annotations, "images_dir": images_dir}
    else:
        if steps_per_epoch is None:
            raise TrainingError("--steps-per-epoch is required with --tfrecords")
        num_images = steps_per_epoch * global_batch
        source = {"tfrecord_pattern": tfrecord_pattern}
    if num_images < global_batch and steps_per_epoch is None:
        raise TrainingError(f"{label_file}: {num_images} images cannot fill one batch of {global_batch}; "
                            "lower train.batch_size")
    # the reference's epoch_size = ceil(images / batch); the dataset repeats, so every step is a full batch
    steps = steps_per_epoch or math.ceil(num_images / global_batch)

    if chief:
        resuming = prepare_output(output_dir, config, data_desc, write=False)
        log_dir = output_dir
    else:  # other workers write their (identical) files where nobody reads them
        resuming = (output_dir / "backup" / "state.json").exists()
        log_dir = Path(tempfile.mkdtemp(prefix="retinaface-worker-"))

    if t.mixed_precision:
        if not tf.config.list_physical_devices("GPU"):
            raise TrainingError("train.mixed_precision needs a GPU")
        keras.mixed_precision.set_global_policy("mixed_float16")

    def dataset_fn(input_context: tf.distribute.InputContext):
        return build_dataset(**source, batch_size=input_context.get_per_replica_batch_size(global_batch),
                             training=True, repeat=True, seed=t.seed, input_context=input_context,
                             verify_images=False, **dataset_kwargs(config))

    dataset = strategy.distribute_datasets_from_function(dataset_fn)

    keras.utils.set_random_seed(t.seed)  # head initialisation (the data has its own stateless seed)
    with strategy.scope():
        model = build_training_model(config, steps_per_epoch=steps, global_batch=global_batch)
        init = "resumed from backup" if resuming else load_initial_weights(
            model, weights=weights, backbone_weights=backbone_weights)
    if chief:  # everything that can fail at start has passed: now the run folder is written
        prepare_output(output_dir, config, data_desc)

    # on_epoch_end runs in this order: every log is complete before history.csv is written, and
    # history.csv before the backup (a kill in between only repeats that epoch on resume)
    callbacks = [StopOnNonFiniteLoss(output_dir), LearningRateLogger()]
    monitor = ("loss", "min")
    if val_images and val_ground_truth and val_every:
        callbacks.append(WiderValidation(val_images, val_ground_truth, every=val_every, config=config,
                                         max_images=val_max_images))
        monitor = ("val_hard_ap", "max")
    callbacks += [WeightsCheckpoint(log_dir, *monitor), HistoryWriter(log_dir / "history.csv", log_dir / "backup"),
                  keras.callbacks.TensorBoard(str(log_dir / "logs"), update_freq="epoch"),
                  AtomicBackupAndRestore(log_dir / "backup"), *extra_callbacks]
    if chief and verbose:
        print(f"training {config.name} on {num_images} images, {steps} steps/epoch of {global_batch} "
              f"({strategy.num_replicas_in_sync} replica(s)), {t.epochs} epochs, init: {init}", file=sys.stderr)
    history = model.fit(dataset, epochs=t.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    if not chief:
        shutil.rmtree(log_dir, ignore_errors=True)
    return history
