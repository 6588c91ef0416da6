"""TensorFlow settings that only take effect when made before TensorFlow is imported.

``retinaface-tf train`` applies :data:`TRAINING` (each variable the user has not set); a Python
program that trains calls :func:`use_training_settings` before its first ``import tensorflow``
(or sets the variables itself). This module imports nothing heavy, so it can run first.

- ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN's convolution, batch-norm and depthwise kernels. TensorFlow
  turns them on by default only on CPUs with AVX-512 VNNI / BF16 or AMX; on an AVX2 CPU (AMD EPYC
  Milan, for one) the training step otherwise runs Eigen's kernels, 1.4x slower.
- ``TF_CPU_ALLOCATOR_USE_BFC=true``: TensorFlow's caching (BFC) allocator for CPU memory. A
  training step allocates and frees the same multi-hundred-MB activation buffers every step;
  through ``malloc`` each of them is a fresh ``mmap`` whose pages the kernel zeroes again, which
  cost up to half the step in system time. The cache keeps them (the process holds its peak
  memory until it exits).
"""

from __future__ import annotations

import os
import sys

TRAINING = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPU_ALLOCATOR_USE_BFC": "true"}


def use_training_settings(environ=None) -> dict[str, str]:
    """Set each :data:`TRAINING` variable the environment does not already have. Returns those
    set. Does nothing once TensorFlow is imported (the settings could no longer take effect)."""
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules:
        return {}
    applied = {k: v for k, v in TRAINING.items() if k not in environ}
    environ.update(applied)
    return applied
