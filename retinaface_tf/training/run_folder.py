"""The run folder ``runs/NAME``: what identifies a run (``config.yaml``, ``run.yaml``), and the
checks that a folder holds this run (to resume) or nothing (to start)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from retinaface_tf.config import Config
from retinaface_tf.errors import ConfigError, TrainingError
from retinaface_tf.fileio import is_lock_file, write_text_atomic
from retinaface_tf.models.weights import CONFIG_FILE, WEIGHTS_FILE

RUN_FILE = "run.yaml"
BEST_FILE = "best.weights.h5"
HISTORY_FILE = "history.csv"
BACKUP_FOLDER = "backup"
STATE_FILE = "state.json"
RUN_FILES = (RUN_FILE, CONFIG_FILE, WEIGHTS_FILE, BEST_FILE, HISTORY_FILE, STATE_FILE)


def _run_identity(config: Config, data: dict) -> dict:
    return {"config": config.to_dict(), "data": data}


def prepare_output(output_dir: Path, config: Config, data: dict, *, write: bool = True) -> bool:
    """Create or re-open the run folder. Returns True when resuming an interrupted run.
    Raises :class:`TrainingError` if the folder holds a different or a finished run. With
    ``write=False`` only the checks run (a new run's ``run.yaml`` is written once everything
    that can fail at start has passed, so a failed start leaves nothing behind). Resuming removes
    the temporary files a kill can leave from an atomic write."""
    run_file = output_dir / RUN_FILE
    identity = _run_identity(config, data)
    if run_file.exists():
        try:
            existing = _current_names(yaml.safe_load(run_file.read_text()), str(run_file))
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingError(f"{run_file}: unreadable run description: {exc}") from None
        if existing != identity:
            diff = _first_difference(existing, identity)
            raise TrainingError(f"{output_dir}: holds a different run ({diff}); choose another --output")
        if not (output_dir / BACKUP_FOLDER / STATE_FILE).exists():
            if (output_dir / WEIGHTS_FILE).exists():
                raise TrainingError(f"{output_dir}: holds a finished run; choose another --output")
            return False
        if write:
            _remove_orphan_temporaries(output_dir)
        return True
    if output_dir.exists() and any(not is_lock_file(item.name) for item in output_dir.iterdir()):
        raise TrainingError(f"{output_dir}: folder is not empty and holds no run.yaml; choose another --output")
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"{output_dir}: exists and is not a folder; choose another --output")
    if write:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output_dir / CONFIG_FILE)
        write_text_atomic(run_file, yaml.safe_dump(identity, sort_keys=False))
    return False


def remove_failed_start(output_dir: Path) -> bool:
    """After a new run stopped before its first epoch was saved (no ``backup/state.json``, no
    weights): remove what its start wrote (``run.yaml``, ``config.yaml``, the TensorBoard logs,
    the empty backup folder, a partial history) and the folder itself when that leaves it empty,
    so the corrected rerun (other data, other settings) is not refused as a different run.
    Returns whether it did; a folder holding anything else is left as it is."""
    if (output_dir / BACKUP_FOLDER / STATE_FILE).exists() or (output_dir / WEIGHTS_FILE).exists():
        return False
    for name in (RUN_FILE, CONFIG_FILE, HISTORY_FILE, BEST_FILE):
        (output_dir / name).unlink(missing_ok=True)
    for name in ("logs", BACKUP_FOLDER):
        if (output_dir / name).is_dir():
            shutil.rmtree(output_dir / name, ignore_errors=True)
    _remove_orphan_temporaries(output_dir)
    try:
        output_dir.rmdir()
    except OSError:
        pass
    return True


def _current_names(identity, source: str):
    """A saved run description with its config read back through :class:`Config`, so a field
    renamed since (``data.rgb_mean`` → ``data.bgr_mean``) compares under its current name."""
    if isinstance(identity, dict) and isinstance(identity.get("config"), dict):
        try:
            return {**identity, "config": Config.from_dict(identity["config"], source=source).to_dict()}
        except ConfigError:
            pass  # compared as it is: the difference is reported
    return identity


def _remove_orphan_temporaries(output_dir: Path) -> None:
    """The hidden ``.NAME.XXXX`` files :func:`~retinaface_tf.fileio.atomic_file` leaves when killed."""
    for folder in (output_dir, output_dir / BACKUP_FOLDER):
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
