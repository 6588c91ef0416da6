"""The reference's learning-rate schedule (``adjust_learning_rate``): steps down by a factor at
chosen epochs, with an optional linear warm-up."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from retinaface_tf.config import TrainConfig


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
