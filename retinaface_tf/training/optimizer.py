"""The reference's optimizer: PyTorch's SGD with momentum and *coupled* weight decay.

``buf = m·buf + g + wd·w``; ``w -= lr·buf`` on every trainable variable, like the reference's
``optim.SGD(net.parameters(), weight_decay=5e-4)``. (Keras' ``l2(x)`` regulariser adds ``x·w²``,
i.e. twice PyTorch's ``weight_decay=x``; Keras' ``SGD(weight_decay=)`` is decoupled. Neither is
the reference.) The base rate scales with the global batch (``lr · global_batch / 32``).
"""

from __future__ import annotations

import keras

from retinaface_tf.config import TrainConfig
from retinaface_tf.training.schedule import StepDecay

REFERENCE_BATCH = 32  # the batch the reference's learning rate 1e-3 belongs to


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
