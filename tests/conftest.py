"""Shared test fixtures.

Real data comes from the folder ``../shared`` beside the repo (or ``$RETINAFACE_SHARED``); tests
that need it skip with a clear reason when it is absent (a user's clone has none).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Detector(runtime="auto") times every installed runtime (10-30 s) for each new network and caches
# the choice: the suite runs TensorFlow, as the tests were written for, unless a test asks for
# another runtime (tests/test_runtime_choice.py clears this), and never writes the user's cache.
os.environ["RETINAFACE_TF_RUNTIME"] = "tf"
os.environ["RETINAFACE_TF_CACHE"] = tempfile.mkdtemp(prefix="retinaface-tf-test-cache-")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set RETINAFACE_SHARED to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference: the PyTorch reference's weights and outputs."""
    return _require(SHARED / "reference", "reference outputs")


@pytest.fixture(scope="session")
def widerface_dir() -> Path:
    """../shared/widerface: WIDER FACE val subset, ground truth and train subset."""
    return _require(SHARED / "widerface", "WIDER FACE test data")


@pytest.fixture(scope="session")
def official_pth(reference_dir) -> Path:
    return _require(reference_dir / "mobilenet0.25_Final.pth", "official weights")


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled converted official mobilenet0.25 model (Keras), built once per session."""
    from retinaface_tf.models.weights import load_model
    return load_model()
