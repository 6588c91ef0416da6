"""Atomic writes: a failed write leaves the old file and no temporary file behind."""

import os

import pytest

from retinaface_tf.fileio import atomic_directory, atomic_file, write_text_atomic


def test_atomic_file_replaces_on_success_and_keeps_old_on_error(tmp_path):
    target = tmp_path / "sub" / "model.weights.h5"
    write_text_atomic(target, "old")
    assert target.read_text() == "old" and oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(RuntimeError):
        with atomic_file(target, suffix=".weights.h5") as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".weights.h5")
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    with atomic_file(target, suffix=".weights.h5") as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(target.parent)) == ["model.weights.h5"]


def test_atomic_directory_keeps_other_files(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
        (tmp / "README.md").write_text("notes")
    with atomic_directory(target, owned=("weights",)) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and (target / "README.md").read_text() == "notes"
    assert sorted(os.listdir(tmp_path)) == ["model"]
