"""Nothing lost (issue 10, §1): an output location only ever holds what the command wrote.

convert replaces a model folder only if it holds convert's own files (plus a README / licence,
carried over); export replaces a SavedModel version folder only if it is an export, and a
``.tflite`` / ``.yaml`` pair only if they are a TFLite model and its description, never leaving
a description beside a model it does not describe. Everything else is an error before any work.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from retinaface_tf.cli import main
from retinaface_tf.fileio import OutputError, atomic_directory, check_output_folder


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------- the guard itself
def test_check_output_folder_cases(tmp_path, monkeypatch):
    check_output_folder(tmp_path / "new", owned=["a"])  # absent: fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", owned=["a"])
    (tmp_path / "file.txt").write_text("precious")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_folder(tmp_path / "file.txt", owned=["a"])
    model = tmp_path / "model"
    model.mkdir()
    (model / "a").write_text("1")
    (model / "README.md").write_text("notes")
    (model / "LICENSE.x").write_text("mit")
    check_output_folder(model, owned=["a"])
    (model / "photos").mkdir()
    with pytest.raises(OutputError, match="holds 'photos'"):
        check_output_folder(model, owned=["a"])
    monkeypatch.chdir(model)
    with pytest.raises(OutputError, match="current folder"):
        check_output_folder(".", owned=["a"])
    with pytest.raises(OutputError, match="current folder"):
        check_output_folder(tmp_path, owned=["a"])


def test_atomic_directory_never_drops_foreign_entries(tmp_path):
    target = tmp_path / "out"
    (target / "photos" / "2024").mkdir(parents=True)
    (target / "photos" / "2024" / "a.jpg").write_bytes(b"jpeg")
    before = _snapshot(target)
    with pytest.raises(OutputError):
        with atomic_directory(target, owned=["weights"]) as tmp:
            (tmp / "weights").write_text("new")
    assert _snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


# ---------------------------------------------------------------------------- convert
@pytest.mark.parametrize("layout", ["nested", "file", "cwd"])
def test_convert_refuses_folders_it_did_not_write(tmp_path, official_pth, capsys, monkeypatch, layout):
    if layout == "nested":
        out = tmp_path / "mydata"
        (out / "photos" / "2024").mkdir(parents=True)
        (out / "photos" / "2024" / "a.jpg").write_bytes(b"my photo")
        (out / "notes.txt").write_text("mine")
        arg, root = str(out), out
    elif layout == "file":
        out = tmp_path / "precious.txt"
        out.write_text("precious")
        arg, root = str(out), tmp_path
    else:
        (tmp_path / "mine.txt").write_text("mine")
        monkeypatch.chdir(tmp_path)
        arg, root = ".", tmp_path
    before = _snapshot(root)
    assert main(["convert", str(official_pth), "--output", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retinaface-tf convert: error:") and "\n" not in err
    assert _snapshot(root) == before


def test_convert_replaces_its_own_model_folder_keeping_readme(tmp_path, official_pth, capsys):
    out = tmp_path / "model"
    assert main(["convert", str(official_pth), "--output", str(out)]) == 0
    (out / "README.md").write_text("my notes")
    first = (out / "model.weights.h5").read_bytes()
    assert main(["convert", str(official_pth), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.weights.h5"]
    assert (out / "README.md").read_text() == "my notes"
    assert len((out / "model.weights.h5").read_bytes()) == len(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------------------- export
def test_saved_model_version_folder_not_written_by_export_is_refused(tmp_path, capsys):
    base = tmp_path / "serving"
    (base / "1").mkdir(parents=True)
    (base / "1" / "data.csv").write_text("user data")
    before = _snapshot(base)
    assert main(["export", "--format", "saved_model", "--output", str(base), "--version", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 'data.csv'" in err and "\n" not in err
    assert _snapshot(base) == before
    (tmp_path / "afile").write_text("x")
    assert main(["export", "--format", "saved_model", "--output", str(tmp_path / "afile"), "--version", "2"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("victim", ["model", "yaml"])
def test_tflite_refuses_to_replace_foreign_files(tmp_path, capsys, victim):
    out = tmp_path / "m.tflite"
    if victim == "model":
        out.write_text("my text, not a model")
    else:
        out.with_suffix(".yaml").write_text("my: settings\n")
    before = _snapshot(tmp_path)
    assert main(["export", "--format", "tflite", "--input-size", "64", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing was changed" in err and "\n" not in err
    assert _snapshot(tmp_path) == before


def test_tflite_pair_is_never_mismatched(bundled_model, tmp_path, monkeypatch):
    """The yaml names the model's sha256; a failure while writing the model leaves no yaml that
    describes another model beside it, and a complete export's pair agrees."""
    from retinaface_tf.serving import ExportSettings, tflite

    model, config = bundled_model
    out = tmp_path / "m.tflite"
    monkeypatch.setattr(tflite, "convert_tflite", lambda *a, **k: b"\0\0\0\0TFL3 model one")
    tflite.export_tflite(model, config, out, ExportSettings(), input_size=(64, 64))
    info = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert info["model_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and info["model_file"] == "m.tflite"

    monkeypatch.setattr(tflite, "convert_tflite", lambda *a, **k: b"\0\0\0\0TFL3 model two")
    real_write = tflite.write_bytes_atomic

    def killed(path, data):  # the process dies while the new model is written
        raise KeyboardInterrupt

    monkeypatch.setattr(tflite, "write_bytes_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        tflite.export_tflite(model, config, out, ExportSettings(), input_size=(64, 64))
    assert out.read_bytes() == b"\0\0\0\0TFL3 model one"
    assert not out.with_suffix(".yaml").exists()  # no description of a model that is not there
    monkeypatch.setattr(tflite, "write_bytes_atomic", real_write)
    tflite.export_tflite(model, config, out, ExportSettings(), input_size=(64, 64))
    info = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert info["model_sha256"] == hashlib.sha256(b"\0\0\0\0TFL3 model two").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.yaml"]
