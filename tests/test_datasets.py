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


def _listening_addresses(ray_tmp: str) -> set:
    """Local addresses (``ip``) of the listening TCP sockets of the processes of that Ray."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    inodes = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if not entry.isdigit() or marker not in f.read().split(b"\0"):
                    continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    raw = bytes.fromhex(fields[1].split(":")[0])
                    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
                    mapped = size == 8 or b"".join(words[:3]) == bytes(10) + b"\xff\xff"  # IPv4 (in IPv6)
                    found.add(".".join(str(b) for b in words[-1]) if mapped else b"".join(words).hex())
    return found


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
@pytest.mark.slow  # a real local Ray start-up and job: ~100 s on 2 cores
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


# ---------------------------------------------------------------------- slow: resume, map_batches, cluster, S3
@pytest.mark.slow
def test_killed_driver_then_rerun_processes_only_the_rest(tmp_path, ray_tmp):
    """kill -9 of the driver once a part is written, then the same command again: only inputs
    without a row are processed, every input ends with exactly one row, a temporary file and a
    crops part without its faces part (what a kill can leave) are removed, the stale lock is taken
    over."""
    wider = _wider(40)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in wider) + "\n")
    dest = tmp_path / "out"
    args = [sys.executable, "-m", "retinaface_tf", "detect-dataset", str(listing), "--output", str(dest), "--crops",
            "-q", "--workers", "1", "--threads-per-worker", "2"]
    driver = subprocess.Popen(args, env=_env(ray_tmp), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and driver.poll() is None:
            if dest.joinpath("faces").is_dir() and any(n.startswith("part-") for n in os.listdir(dest / "faces")):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the job ended before it could be killed"
        listening = _listening_addresses(ray_tmp)  # the local Ray uses 127.0.0.1 only
        assert listening and listening == {"127.0.0.1"}, listening
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=60)
    _end_ray_processes(ray_tmp)
    os.makedirs(ray_tmp, exist_ok=True)
    first = len(pq.read_table(str(dest / "faces")))
    assert 0 < first < len(wider) and (dest / LOCK_FILE).exists()
    (dest / "faces" / ".part-0.parquet.dead.tmp").write_bytes(b"half")
    some_crops = sorted((dest / "crops").iterdir())[0]
    shutil.copy(some_crops, dest / "crops" / "part-000000000000000000000000.parquet")

    out = _cli([listing, "--output", dest, "--crops", "--workers", "1", "--threads-per-worker", "2"], ray_tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(wider) - first} images, " in out.stdout and f"; {first} already done" in out.stdout
    paths = pq.read_table(str(dest / "faces")).column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in wider)  # each exactly once
    crops = pq.read_table(str(dest / "crops"))
    faces = pq.read_table(str(dest / "faces")).column("scores").to_pylist()
    assert len(crops) == sum(len(s) for s in faces)
    assert sorted(n for n in os.listdir(dest / "crops") if not n.startswith("part-")) == []
    assert sorted(n for n in os.listdir(dest / "faces") if not n.startswith("part-")) == []
    assert sorted(os.listdir(dest)) == ["crops", "faces", "job.json"]


def _detector_actor_pids(ray_tmp: str) -> list[int]:
    """The detector actors of the Ray whose RAY_TMPDIR is ``ray_tmp`` (process title
    ``ray::MapWorker(MapBatches(_DetectAndWrite))...``)."""
    marker, pids = f"RAY_TMPDIR={ray_tmp}".encode(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"_DetectAndWrite" in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_worker_killed_mid_job_is_retried_and_no_row_is_written_twice(tmp_path, ray_tmp):
    """kill -9 of the detector actor once a part is written: Ray restarts it and retries its
    batch, the job ends normally, and every input has exactly one row (a retried batch rewrites
    the same part name)."""
    wider = _wider(48)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in wider) + "\n")
    dest = tmp_path / "out"
    args = [sys.executable, "-m", "retinaface_tf", "detect-dataset", str(listing), "--output", str(dest),
            "--workers", "1", "--threads-per-worker", "2"]
    driver = subprocess.Popen(args, env=_env(ray_tmp), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    killed = []
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and driver.poll() is None and not killed:
            if dest.joinpath("faces").is_dir() and any(n.startswith("part-") for n in os.listdir(dest / "faces")):
                for pid in _detector_actor_pids(ray_tmp):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)
        out, err = driver.communicate(timeout=JOB_TIMEOUT)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=60)
    assert killed, "no detector actor was seen running after the first part"
    assert driver.returncode == 0, err[-3000:]
    assert f"{len(wider)} images, " in out
    paths = pq.read_table(str(dest / "faces")).column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in wider)  # each exactly once
    assert sorted(n for n in os.listdir(dest / "faces") if not n.startswith("part-")) == []


MAP_BATCHES = r'''
import json, os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from retinaface_tf.datasets import FaceDetector
folder = sys.argv[1]
ray_context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
try:
    results = {}
    for reader, column in ((ray.data.read_binary_files, "bytes"), (ray.data.read_images, "image")):
        ds = reader(folder, include_paths=True).map_batches(
            FaceDetector, fn_constructor_kwargs={"score_threshold": 0.5}, batch_size=4,
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        results[column] = {os.path.basename(r["path"]): {"boxes": r["boxes"].tolist() if hasattr(r["boxes"], "tolist")
                           else r["boxes"], "columns": sorted(r)} for r in ds.take_all()}
    print("RESULT " + json.dumps(results))
finally:
    ray_context.disconnect()
'''


@pytest.mark.slow
def test_map_batches_form_on_read_binary_files_and_read_images(tmp_path, ray_tmp, detector):
    """The Python form in a user's own pipeline: read_binary_files (encoded) and read_images
    (decoded RGB) through FaceDetector give the in-process Detector's faces."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bundled_image(), src / "photo.jpg")
    for path in _wider(2):
        shutil.copy(path, src / path.name)
    out = subprocess.run([sys.executable, "-c", MAP_BATCHES, str(src)], capture_output=True, text=True,
                         env=_env(ray_tmp), timeout=JOB_TIMEOUT, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.split("RESULT ", 1)[1])
    for column in ("bytes", "image"):
        assert sorted(results[column]) == sorted(os.listdir(src))
        for name, row in results[column].items():
            assert column not in row["columns"] and "scores" in row["columns"]
            boxes = np.array([np.asarray(b, np.float32) for b in row["boxes"]]).reshape(-1, 4)
            expected = detector.detect(read_image(src / name)).boxes
            if column == "bytes":  # the same decoder as detect: the same boxes
                np.testing.assert_allclose(boxes, expected, atol=0.01)
            else:  # PIL's JPEG decoder: pixels may differ by rounding, faces the same within 1 px
                assert abs(len(boxes) - len(expected)) <= max(1, len(expected) // 20)


CLUSTER = r'''
import json, os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
from ray.cluster_utils import Cluster
from retinaface_tf.datasets import run_job
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                        "node_ip_address": "127.0.0.1"})
try:
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    summary = run_job(sys.argv[1], sys.argv[2], address=cluster.address, quiet=True)
    print("RESULT " + json.dumps({"address": cluster.address, "workers": summary.workers,
                                  "threads": summary.threads_per_worker, "images": summary.images,
                                  "refused": summary.refused}))
finally:
    cluster.shutdown()
'''


@pytest.mark.slow
def test_two_node_cluster_on_loopback(tmp_path, ray_tmp):
    """A two-node cluster on 127.0.0.1 (ray.cluster_utils.Cluster, 1 CPU each, token
    authentication on) joined with ``address``: two actors of one thread, each reserving 0.75 CPU, so one per node; every input
    gets its row."""
    src = tmp_path / "src"
    src.mkdir()
    wider = _wider(6)
    for path in wider:
        shutil.copy(path, src / path.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    # token authentication on, for the nodes and the driver that joins them by address
    token = _env(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="retinaface-tf-test-token-0123456789abcdef")
    out = subprocess.run([sys.executable, "-c", CLUSTER, str(src), str(tmp_path / "out")], capture_output=True,
                         text=True, env=token, timeout=JOB_TIMEOUT, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["address"].startswith("127.0.0.1:")
    assert (result["workers"], result["threads"], result["images"], result["refused"]) == (2, 1, 7, 1)
    rows = _rows(tmp_path / "out" / "faces")
    assert sorted(rows) == sorted([p.name for p in wider] + ["broken.jpg"])
    assert all(len(rows[p.name]["scores"]) > 0 for p in wider)


@pytest.fixture
def s3_server():
    moto = pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    boto3 = pytest.importorskip("boto3")
    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="faces-bucket")
        yield client, f"endpoint_override={host}:{port}&scheme=http&region=us-east-1", env
    finally:
        server.stop()


@pytest.mark.slow
def test_s3_source_and_dest_on_a_moto_server(tmp_path, ray_tmp, s3_server, detector):
    """SOURCE read from and DEST written to an S3 bucket (moto in server mode on 127.0.0.1):
    rows equal the in-process Detector's, crops written, nothing temporary left in the bucket."""
    client, query, env = s3_server
    photo = bundled_image()
    client.put_object(Bucket="faces-bucket", Key="photos/a/photo.jpg", Body=photo.read_bytes())
    client.put_object(Bucket="faces-bucket", Key="photos/a/broken.jpg", Body=b"not a jpeg")
    out = _cli([f"s3://faces-bucket/photos?{query}", "--output", f"s3://faces-bucket/results?{query}", "--crops",
                "--workers", "1", "--threads-per-worker", "2"], ray_tmp, **env)
    assert out.returncode == 1, out.stderr[-3000:]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="faces-bucket", Prefix="results/")["Contents"])
    assert "results/job.json" in keys and not any(k.endswith((".tmp", ".lock")) for k in keys), keys
    local = tmp_path / "results"
    for key in keys:
        if key.endswith(".parquet"):
            target = local / key.split("/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket="faces-bucket", Key=key)["Body"].read())
    rows = _rows(local / "faces")
    assert sorted(rows) == ["a/broken.jpg", "a/photo.jpg"]
    _assert_same_as_detector(rows["a/photo.jpg"], detector, photo)
    assert "not a readable image" in rows["a/broken.jpg"]["error"]
    assert len(pq.read_table(str(local / "crops"))) == len(rows["a/photo.jpg"]["scores"])
