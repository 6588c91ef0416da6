"""``tf.distribute`` for training: the strategy, the chief, and the training model.

- Strategy: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster, else
  ``MirroredStrategy`` over every GPU (one device, or the CPU, when that is all there is).
- :class:`DistributedTrainingModel`: the functional network with Keras 3's ``fit`` fixed under
  MultiWorkerMirroredStrategy (keras-team/keras#20585).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf


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
