"""Datasets on Ray Data (retinaface_tf.datasets, ``detect-dataset``): real Ray, real files, no mocks.

Every Ray job runs in a child process with a time limit and its own ``RAY_TMPDIR``; the job stops
the local Ray it started itself (``ray.init``'s handle), and a test that kills a driver ends the
processes of that Ray by their ids (found by that ``RAY_TMPDIR``), never with ``ray stop``. The
default suite runs one local job (about 30-40 s); the cluster, S3, resume and map_batches forms
are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED

pa = pytest.importorskip("pyarrow", reason="the ray extra (ray[data], pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("ray", reason="the ray extra (ray[data]) is not installed")

from retinaface_tf.datasets import FaceDetector  # noqa: E402
from retinaface_tf.datasets.job import plan_workers, run_job  # noqa: E402
from retinaface_tf.datasets.output import LOCK_FILE, _dest_lock  # noqa: E402
from retinaface_tf.datasets.sources import list_inputs, location  # noqa: E402
from retinaface_tf.errors import OutputError, UsageError  # noqa: E402
from retinaface_tf.fileio import bundled_image, read_image  # noqa: E402
from retinaface_tf.inference import Detector  # noqa: E402

WIDER_VAL = SHARED / "widerface" / "val" / "images"
JOB_TIMEOUT = 420


def _wider(n: int) -> list[Path]:
    if not WIDER_VAL.is_dir():
        pytest.skip(f"WIDER FACE val images not found at {WIDER_VAL} (set RETINAFACE_SHARED to the shared data folder)")
    return sorted(WIDER_VAL.rglob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def detector():
    return Detector()


def _env(ray_tmp: str, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _end_ray_processes(ray_tmp: str) -> None:
    """SIGKILL, one by one, the processes of the Ray whose RAY_TMPDIR is ``ray_tmp`` (what a
    killed driver's Ray leaves running), then remove the folder."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rtray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    yield path
    _end_ray_processes(path)


def _cli(args, ray_tmp, timeout=JOB_TIMEOUT, **env):
    return subprocess.run([sys.executable, "-m", "retinaface_tf", "detect-dataset", *map(str, args)],
                          capture_output=True, text=True, env=_env(ray_tmp, **env), timeout=timeout, cwd=REPO)


def _rows(folder) -> dict:
    table = pq.read_table(str(folder))
    return {row["path"]: row for row in table.to_pylist()}


def _assert_same_as_detector(row: dict, detector: Detector, path: Path) -> None:
    image = read_image(path)
    faces = detector.detect(image)
    assert row["error"] is None
    assert (row["width"], row["height"]) == (image.shape[1], image.shape[0])
    assert len(row["scores"]) == len(faces) > 0
    np.testing.assert_allclose(np.array(row["boxes"], np.float32).reshape(-1, 4), faces.boxes, atol=0.01)
    np.testing.assert_allclose(np.array(row["landmarks"], np.float32).reshape(-1, 5, 2), faces.landmarks, atol=0.01)
    np.testing.assert_allclose(row["scores"], faces.scores, atol=1e-4)


def _bad_inputs(folder: Path) -> dict:
    """Files that cannot be detected in, and the words their row's error must hold."""
    photo = bundled_image().read_bytes()
    (folder / "notes.png").write_bytes(b"this is not an image")
    (folder / "cut.jpg").write_bytes(photo[:2000])
    (folder / "empty.jpg").write_bytes(b"")
    # a valid PNG header declaring 20000 x 20000 pixels: refused from the header (--max-pixels 50M)
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2
                                      + b"\x08\x02\x00\x00\x00" + b"\x00" * 4)
    return {"notes.png": "not a readable image", "cut.jpg": "not a readable image", "empty.jpg": "empty file",
            "huge.png": "over the limit"}


# ---------------------------------------------------------------------- without Ray running
def test_face_detector_bytes_and_image_batches_equal_detect(detector):
    """The map_batches class on a batch of encoded files and one of decoded RGB arrays gives the
    in-process Detector's faces; a corrupt row gets its error, the others go on."""
    photo = bundled_image()
    udf = FaceDetector(crop_size=112)
    batch = {"path": np.array(["a/photo.jpg", "b/broken.jpg"], object),
             "bytes": np.array([photo.read_bytes(), b"\xff\xd8garbage"], object)}
    out = udf(batch)
    assert out.column_names[:1] == ["path"] and "bytes" not in out.column_names
    rows = out.to_pylist()
    _assert_same_as_detector(rows[0], detector, photo)
    assert rows[1]["boxes"] is None and rows[1]["error"].startswith("b/broken.jpg: not a readable image")
    assert len(rows[0]["crops"]) == len(rows[0]["scores"]) and rows[0]["crops"][0][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array(rows[0]["crop_matrices"]).shape == (len(rows[0]["scores"]), 2, 3)

    rgb = read_image(photo)[..., ::-1]
    out = FaceDetector(max_pixels=10_000)({"image": np.stack([rgb])}).to_pylist()
    assert "over the limit" in out[0]["error"]
    out = udf({"image": np.stack([rgb]), "id": np.array([7])}).to_pylist()
    assert out[0]["id"] == 7
    _assert_same_as_detector(out[0], detector, photo)


def test_plan_workers_leaves_cpus_for_reading():
    """2 CPUs: one actor of 2 TensorFlow threads reserving 1.5 CPUs, so read tasks (0.25) run (the
    naive plan, actors taking every CPU, hung); overrides are kept and still fit."""
    assert plan_workers([2.0], None, None) == (1, 2, 1.5)
    assert plan_workers([1.0, 1.0], None, None) == (2, 1, 0.75)
    assert plan_workers([16.0, 16.0], None, None) == (8, 4, 3.0)
    workers, threads, reserve = plan_workers([2.0], 2, 2)
    assert (workers, threads) == (2, 2) and workers * reserve <= 2 * 0.75


def test_sources_folder_list_file_and_bad_lines(tmp_path):
    (tmp_path / "src" / "deep" / "er").mkdir(parents=True)
    for name in ("a.jpg", "deep/b.PNG", "deep/er/c.webp", "deep/readme.txt"):
        (tmp_path / "src" / name).write_bytes(b"x")
    found = list_inputs(location(str(tmp_path / "src"), "SOURCE"))
    assert found.names == ["a.jpg", "deep/b.PNG", "deep/er/c.webp"]
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\nsrc/a.jpg\n\nsrc/a.jpg\n/abs/x.jpg\n")
    found = list_inputs(location(str(listing), "SOURCE"))
    assert found.names == ["src/a.jpg", "/abs/x.jpg"] and found.paths[0] == str(tmp_path / "src" / "a.jpg")
    listing.write_bytes(b"ok.jpg\n" + b"\xff\xfe.jpg\n")
    with pytest.raises(UsageError, match=r"list.txt:2: not UTF-8"):
        list_inputs(location(str(listing), "SOURCE"))
    with pytest.raises(UsageError, match="no such folder or file"):
        list_inputs(location(str(tmp_path / "missing"), "SOURCE"))


def test_second_job_into_the_same_dest_is_refused(tmp_path):
    """A live job's lock refuses a second job in one line before Ray starts; a lock left by a
    process that is gone is taken over; a folder detect-dataset did not write is refused."""
    (tmp_path / "src").mkdir()
    shutil.copy(bundled_image(), tmp_path / "src")
    dest = location(str(tmp_path / "out"), "--output")
    with _dest_lock(dest):
        lock = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert lock["pid"] == os.getpid()
        with pytest.raises(OutputError, match=rf"another detect-dataset job writes there \(pid {os.getpid()}"):
            run_job(str(tmp_path / "src"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": lock["host"]}))
    with _dest_lock(dest):  # stale: taken over
        assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == os.getpid()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds no job.json"):
        run_job(str(tmp_path / "src"), str(tmp_path / "other"))
    assert os.listdir(tmp_path / "other") == ["keep.txt"]


def test_without_ray_one_line_naming_the_extra(tmp_path):
    """With ``ray`` unimportable the command prints one line naming the extra and exits 2."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), str(REPO)]),
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "retinaface_tf", "detect-dataset", str(tmp_path), "--output",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        'retinaface-tf detect-dataset: error: needs Ray Data: pip install "retinaface-tf[ray]"']
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- a real local Ray
def test_local_job_equals_detect_and_keeps_refused_rows(tmp_path, ray_tmp, detector):
    """A real local Ray (2 CPUs, 127.0.0.1): every input has one row; the faces equal the
    in-process Detector's (same count, boxes within 0.01 px) on the bundled photo and WIDER val
    photos; corrupt, empty, non-image and over --max-pixels files get their error and the job
    goes on; exit status 1; the summary line counts them."""
    src = tmp_path / "src"
    (src / "wider").mkdir(parents=True)
    shutil.copy(bundled_image(), src / "photo.jpg")
    wider = _wider(2)
    for path in wider:
        shutil.copy(path, src / "wider" / path.name)
    bad = _bad_inputs(src)
    out = _cli([src, "--output", tmp_path / "out", "--max-pixels", "50M", "--workers", "1",
                "--threads-per-worker", "2"], ray_tmp)
    assert out.returncode == 1, out.stderr[-3000:]
    rows = _rows(tmp_path / "out" / "faces")
    assert sorted(rows) == sorted(["photo.jpg", *bad, *(f"wider/{p.name}" for p in wider)])
    _assert_same_as_detector(rows["photo.jpg"], detector, bundled_image())
    for path in wider:
        _assert_same_as_detector(rows[f"wider/{path.name}"], detector, path)
    for name, words in bad.items():
        assert words in rows[name]["error"] and rows[name]["boxes"] is None, rows[name]["error"]
        assert "\n" not in rows[name]["error"]
    faces = sum(len(r["scores"]) for r in rows.values() if r["scores"] is not None)
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{len(rows)} images, {faces} faces, {len(bad)} refused, ") and "images/s" in summary
    assert f"{len(bad)} of {len(rows)} images refused" in out.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["faces", "job.json"]  # no lock, no temporary file left
