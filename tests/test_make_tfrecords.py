"""make-tfrecords: label file + images → the shards train --tfrecords reads; never replaces
existing shards, and a bad image leaves nothing behind."""

from __future__ import annotations

import numpy as np

from synthetic import make_dataset

from retinaface_tf.cli import main
from retinaface_tf.data.tfrecord import read_tfrecords


def test_make_tfrecords_round_trip(tmp_path, capsys):
    label, images = make_dataset(tmp_path / "data", images=5)
    out = tmp_path / "shards" / "train"
    assert main(["make-tfrecords", str(label), str(images), "--output", str(out), "--shards", "2"]) == 0
    assert "5 images, 10 faces" in capsys.readouterr().out
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert shards == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    records = list(read_tfrecords(str(out) + "-*.tfrecord", shuffle_files=False))
    assert len(records) == 5
    assert sorted(int(faces.boxes.shape[0]) for _, faces in records) == [2] * 5
    contents = sorted(bytes(np.asarray(data).item()) for data, _ in records)
    assert contents == sorted(p.read_bytes() for p in images.glob("*.jpg"))  # original bytes, not re-encoded

    # existing shards are never replaced
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    assert main(["make-tfrecords", str(label), str(images), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "shards with this prefix exist" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before


def test_make_tfrecords_bad_image_writes_nothing(tmp_path, capsys):
    label, images = make_dataset(tmp_path / "data", images=3)
    (images / "im1.jpg").write_bytes(b"not a jpeg")
    assert main(["make-tfrecords", str(label), str(images), "--output", str(tmp_path / "s" / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "im1.jpg" in err and "\n" not in err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    assert main(["make-tfrecords", str(label), str(images), "--output", str(tmp_path), "--shards", "0"]) == 2
