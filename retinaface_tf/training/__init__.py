"""Training with ``model.fit`` under ``tf.distribute``: the reference recipe, resumable.

- :mod:`~retinaface_tf.training.optimizer`: :class:`TorchSGD`, PyTorch's SGD update exactly
  (``buf = m·buf + g + wd·w``; ``w -= lr·buf``): coupled weight decay on every trainable
  variable, like the reference's ``optim.SGD(net.parameters(), weight_decay=5e-4)``; the base
  rate scales with the global batch (``lr · global_batch / 32``).
- :mod:`~retinaface_tf.training.schedule`: :class:`StepDecay`, ``lr · factor^k`` after each decay
  epoch, optional linear warm-up from 1e-6 (the reference's ``adjust_learning_rate``).
- :mod:`~retinaface_tf.training.distribution`: the strategy (``MultiWorkerMirroredStrategy`` when
  ``TF_CONFIG`` names a cluster, else ``MirroredStrategy`` over every GPU, or the CPU) and
  :class:`DistributedTrainingModel`.
- :mod:`~retinaface_tf.training.callbacks`: atomic checkpoints and backups, ``history.csv``,
  learning-rate logging, a stop on a non-finite loss, the validation callback base.
- :mod:`~retinaface_tf.training.run_folder`: ``runs/NAME``: ``config.yaml`` + ``run.yaml`` (what
  the run is), ``model.weights.h5`` (last epoch, weights only), ``best.weights.h5``,
  ``history.csv``, ``logs/`` (TensorBoard), ``backup/`` (model + optimizer state + epoch, written
  atomically every epoch; a killed run resumes from its last completed epoch; removed when the run
  completes).
- :mod:`~retinaface_tf.training.trainer`: :func:`train` and :func:`build_training_model`.
"""

from retinaface_tf.models.weights import load_initial_weights  # where a run starts (models/weights.py)
from retinaface_tf.training.callbacks import (AtomicBackupAndRestore, HistoryWriter, LearningRateLogger,
                                              StopOnNonFiniteLoss, ValidationCallback, WeightsCheckpoint,
                                              save_weights_atomic)
from retinaface_tf.training.distribution import DistributedTrainingModel, is_chief, make_strategy
from retinaface_tf.training.optimizer import REFERENCE_BATCH, TorchSGD, make_optimizer
from retinaface_tf.training.run_folder import RUN_FILES, prepare_output
from retinaface_tf.training.schedule import StepDecay
from retinaface_tf.training.trainer import build_training_model, train

__all__ = ["AtomicBackupAndRestore", "DistributedTrainingModel", "HistoryWriter", "LearningRateLogger",
           "REFERENCE_BATCH", "RUN_FILES", "StepDecay", "StopOnNonFiniteLoss", "TorchSGD", "ValidationCallback",
           "WeightsCheckpoint", "build_training_model", "is_chief", "load_initial_weights", "make_optimizer",
           "make_strategy", "prepare_output", "save_weights_atomic", "train"]
