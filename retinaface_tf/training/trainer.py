"""``train``: a run of ``model.fit`` under ``tf.distribute``, the reference recipe, resumable.

Every check that can fail runs before anything is written and before the first step: config,
replicas, output folder, labels, images, initial weights. Then the run folder is written and
``fit`` runs with the callbacks of :mod:`retinaface_tf.training.callbacks`.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from retinaface_tf.config import Config
from retinaface_tf.data.pipeline import build_dataset, dataset_kwargs
from retinaface_tf.data.tfrecord import check_tfrecords
from retinaface_tf.data.widerface import check_images, read_annotations
from retinaface_tf.errors import TrainingError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, first_line
from retinaface_tf.losses import MultiBoxLoss
from retinaface_tf.models.retinaface import build_from_config
from retinaface_tf.models.weights import load_initial_weights
from retinaface_tf.training.callbacks import (AtomicBackupAndRestore, HistoryWriter, LearningRateLogger,
                                              StopOnNonFiniteLoss, ValidationCallback, WeightsCheckpoint)
from retinaface_tf.training.distribution import DistributedTrainingModel, is_chief, make_strategy
from retinaface_tf.training.optimizer import make_optimizer
from retinaface_tf.training.run_folder import (BACKUP_FOLDER, HISTORY_FILE, STATE_FILE, prepare_output,
                                              remove_failed_start)


def build_training_model(config: Config, *, steps_per_epoch: int, global_batch: int) -> keras.Model:
    """The network compiled with the reference optimizer, schedule and MultiBoxLoss (call inside
    ``strategy.scope()``). Keras logs the unweighted terms as ``bbox_loss``, ``classes_loss``,
    ``landmarks_loss`` beside the weighted total ``loss``."""
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


def _data_source(*, label_file, images_dir, tfrecord_pattern, steps_per_epoch: int | None,
                 global_batch: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[dict, int, int]:
    """Read and check the training data (a bad label file or a missing image fails here, before
    anything is written). Returns ``(build_dataset source arguments, images, steps per epoch)``:
    the reference's ``ceil(images / batch)`` steps (the dataset repeats, so every step is full)."""
    if tfrecord_pattern is None:
        if label_file is None or images_dir is None:
            raise TrainingError("give --label-file and --images (or --tfrecords)")
        annotations = read_annotations(label_file)
        num_images = len(annotations.images)
        if num_images == 0:
            raise TrainingError(f"{label_file}: dataset is empty (no image with a usable face)")
        # every missing or oversized image named, before anything is written
        check_images(annotations, images_dir, max_pixels=max_pixels)
        source = {"annotations": annotations, "images_dir": images_dir}
    else:
        if steps_per_epoch is None:
            raise TrainingError("--steps-per-epoch is required with --tfrecords")
        num_images = steps_per_epoch * global_batch
        # every record of every shard, before anything is written: one line naming shard and record
        check_tfrecords(tfrecord_pattern, max_pixels=max_pixels)
        source = {"tfrecord_pattern": tfrecord_pattern}
    if num_images < global_batch and steps_per_epoch is None:
        raise TrainingError(f"{label_file}: {num_images} images cannot fill one batch of {global_batch}; "
                            "lower train.batch_size")
    return source, num_images, steps_per_epoch or math.ceil(num_images / global_batch)


def _callbacks(log_dir: Path, output_dir: Path, validation: ValidationCallback | None, extra) -> list:
    """In ``on_epoch_end`` order: every log is complete before ``history.csv`` is written, and
    ``history.csv`` before the backup (a kill in between only repeats that epoch on resume)."""
    callbacks = [StopOnNonFiniteLoss(output_dir), LearningRateLogger()]
    monitor = ("loss", "min")
    if validation is not None:
        callbacks.append(validation)
        monitor = validation.monitor
    return callbacks + [WeightsCheckpoint(log_dir, *monitor),
                        HistoryWriter(log_dir / HISTORY_FILE, log_dir / BACKUP_FOLDER),
                        keras.callbacks.TensorBoard(str(log_dir / "logs"), update_freq="epoch"),
                        AtomicBackupAndRestore(log_dir / BACKUP_FOLDER), *extra]


def train(config: Config, *, output_dir, label_file=None, images_dir=None, tfrecord_pattern=None,
          weights=None, backbone_weights=None, validation: ValidationCallback | None = None,
          steps_per_epoch: int | None = None, verbose: int | str = "auto", extra_callbacks=(),
          strategy: tf.distribute.Strategy | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Train (or resume) a run into ``output_dir``. Every check that can fail runs before the
    first step: config, output folder, labels, images, initial weights. ``validation`` (e.g.
    :class:`retinaface_tf.evaluation.validation.WiderValidation`) adds its values to the logs and
    chooses what ``best.weights.h5`` follows. Training images declaring more than ``max_pixels``
    pixels in their header are refused before any step (``None``: no limit). Returns the Keras
    ``History``."""
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
    source, num_images, steps = _data_source(label_file=label_file, images_dir=images_dir,
                                             tfrecord_pattern=tfrecord_pattern, steps_per_epoch=steps_per_epoch,
                                             global_batch=global_batch, max_pixels=max_pixels)
    if chief:
        resuming = prepare_output(output_dir, config, data_desc, write=False)
        log_dir = output_dir
    else:  # other workers write their (identical) files where nobody reads them
        resuming = (output_dir / BACKUP_FOLDER / STATE_FILE).exists()
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
    fresh = chief and not resuming and not (output_dir / "run.yaml").exists()
    if chief:  # everything that can fail at start has passed: now the run folder is written
        prepare_output(output_dir, config, data_desc)
    if chief and verbose:
        print(f"training {config.name} on {num_images} images, {steps} steps/epoch of {global_batch} "
              f"({strategy.num_replicas_in_sync} replica(s)), {t.epochs} epochs, init: {init}", file=sys.stderr)
    try:
        # shuffle=False: the dataset shuffles itself (a full permutation every pass); Keras would only warn
        # that its own shuffle=True is ignored for a tf.data input
        history = model.fit(dataset, epochs=t.epochs, steps_per_epoch=steps, verbose=verbose, shuffle=False,
                            callbacks=_callbacks(log_dir, output_dir, validation, extra_callbacks))
    except BaseException as exc:
        # a run that stops before its first epoch is saved leaves nothing that blocks the rerun
        removed = fresh and remove_failed_start(output_dir)
        if isinstance(exc, tf.errors.OpError):  # the data broke inside a step (a shard damaged since the check)
            source_name = tfrecord_pattern or label_file
            note = "; the run folder was removed (no epoch finished)" if removed else ""
            raise TrainingError(f"{source_name}: training stopped, the data cannot be read "
                                f"({type(exc).__name__}: {first_line(exc)[:300]}){note}") from None
        raise
    if not chief:
        shutil.rmtree(log_dir, ignore_errors=True)
    return history
