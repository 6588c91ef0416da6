"""One whole dataset job on Ray Data: list SOURCE, skip what DEST already holds, read the files
(tasks), detect (one :class:`FaceDetector` per actor) and write each batch's part files from the
actor that made them, then one summary. ``retinaface-tf detect-dataset`` calls :func:`run_job`.

Ray: ``address`` (or ``RAY_ADDRESS``) joins a running cluster; token authentication stays as the
cluster has it (the driver finds the token in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``).
Without an address, a local Ray is started on 127.0.0.1 only, without dashboard or usage report,
and stopped at the end through the handle ``ray.init`` returned. A process that already runs Ray
(``ray.init`` called before) keeps its connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

from retinaface_tf.datasets.detector import FaceDetector, crop_rows
from retinaface_tf.datasets.output import (CROPS, FACES, _dest_lock, check_destination, count_rows, done_rows,
                                           part_name, start_destination, write_part)
from retinaface_tf.datasets.sources import Location, is_uri, list_inputs, location, read_files
from retinaface_tf.errors import DetectorError, RetinaFaceError, UsageError
from retinaface_tf.fileio import DEFAULT_MAX_PIXELS, check_max_pixels
from retinaface_tf.inference import RUNTIMES, check_fraction
from retinaface_tf.models.weights import resolve_weights

EXTRA_HINT = 'pip install "retinaface-tf[ray]"'
READ_BLOCK = 32        # inputs per read task
ROWS_PER_CALL = 16     # inputs per FaceDetector call (and per part file)
READ_CPUS = 0.25       # logical CPUs a read task reserves
ACTOR_SHARE = 0.75     # of its threads' CPUs an actor reserves: the rest is left to reading / decoding
MAX_THREADS = 4        # default TensorFlow threads per actor (more actors beyond that)
SHOWN_ERRORS = 10      # refused inputs printed one per line; the rest are counted


class RayMissingError(RetinaFaceError):
    """Ray Data is not installed."""


def require_ray(local: bool = False):
    """``ray`` (imported), or a one-line error naming the extra that brings it. ``local``: for a
    local Ray on 127.0.0.1 only. Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is
    imported: unless set to 0, a Linux Ray replaces 127.0.0.1 with the machine's interface
    address and its servers listen on every interface. (A process whose Ray was imported that
    way keeps it: it cannot then join a cluster on other machines.)"""
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's processes read it too
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayMissingError(f"needs Ray Data: {EXTRA_HINT}") from None
    return ray


@dataclass
class JobSummary:
    """What one job did: ``images`` processed now (``skipped``: already in DEST), ``faces``,
    ``refused`` (rows with an error, now), ``seconds`` (whole job), the first refusals."""

    images: int = 0
    faces: int = 0
    refused: int = 0
    skipped: int = 0
    skipped_refused: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    workers: int = 0
    threads_per_worker: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self, dest: str) -> str:
        skipped = f"; {self.skipped} already done" if self.skipped else ""
        return (f"{self.images} images, {self.faces} faces, {self.refused} refused, {self.images_per_s:.2f} images/s "
                f"({self.seconds:.1f} s, {self.workers} workers x {self.threads_per_worker} threads){skipped}; "
                f"results in {dest.rstrip('/')}/{FACES}/")


class _DetectAndWrite(FaceDetector):
    """The job's actor: :class:`FaceDetector`, then the batch's part files written from here (one
    ``faces/`` part, and a ``crops/`` part first), and one small row per input back to the driver."""

    def __init__(self, dest: Location, **kwargs):
        super().__init__(**kwargs)
        self.dest = dest

    def __call__(self, batch):
        import pyarrow as pa
        table = super().__call__(batch)
        name = part_name(table.column("path").to_pylist())
        if self.crop_size is not None:
            crops = crop_rows(table)
            if crops.num_rows:
                write_part(self.dest, CROPS, name, crops)
            table = table.drop_columns(["crops", "crop_matrices", "crop_from_landmarks"])
        write_part(self.dest, FACES, name, table)
        faces = [0 if s is None else len(s) for s in table.column("scores").to_pylist()]
        return pa.table({"path": table.column("path"), "faces": pa.array(faces, pa.int32()),
                         "error": table.column("error")})


def plan_workers(node_cpus: list[float], workers: int | None, threads: int | None,
                 gpus_per_worker: float = 0.0) -> tuple[int, int, float]:
    """``(actors, TensorFlow threads each, logical CPUs each reserves)``: by default actors x
    threads = the cluster's CPUs, each actor reserving :data:`ACTOR_SHARE` of its threads so the
    read tasks (:data:`READ_CPUS` each) always find CPUs."""
    nodes = [c for c in node_cpus if c >= 1] or [1.0]
    total = sum(nodes)
    if threads is None:
        threads = max(1, min(MAX_THREADS, int(min(nodes))))
    if workers is None:
        workers = max(1, sum(max(1, int(c // threads)) for c in nodes))
    reserve = ACTOR_SHARE * min(float(threads), total / workers)
    if gpus_per_worker:
        reserve = min(reserve, 1.0)
    return workers, threads, round(max(0.05, reserve), 2)


def _positive(name: str, value, minimum=1):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def _local_path(value):
    """A weights / config path made absolute (workers run in another folder); names stay names."""
    if value is None or is_uri(str(value)) or not os.path.exists(str(value)):
        return value
    return os.path.abspath(str(value))


def settings_of(source: Location, *, score_threshold, max_size, max_pixels, weights, config, crops, crop_size):
    return {"source": source.text if is_uri(source.text) else source.path, "score_threshold": score_threshold,
            "max_size": max_size, "max_pixels": max_pixels, "weights": None if weights is None else str(weights),
            "config": None if config is None else str(config), "crops": bool(crops),
            "crop_size": list(crop_size) if crops else None}


def run_job(source: str, output: str, *, score_threshold: float = 0.5, max_size: int | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, crops: bool = False, crop_size=(112, 112),
            weights=None, config=None, runtime: str = "auto", workers: int | None = None,
            threads_per_worker: int | None = None, gpus_per_worker: float = 0.0, address: str | None = None,
            num_cpus: int | None = None, quiet: bool = False, out=None) -> JobSummary:
    """Detect the faces of every input of ``source`` into ``output`` (see docs/datasets.md).

    ``source``: a folder, a text file listing paths, or a pyarrow filesystem URI; ``output``: a
    folder or URI. ``workers`` / ``threads_per_worker``: actors and TensorFlow threads each
    (default: fill the cluster, CPUs left for reading). ``address``: a Ray cluster (default
    ``RAY_ADDRESS``, else a local Ray on 127.0.0.1 with ``num_cpus`` CPUs, default all).
    ``out``: where the summary goes (default stdout; ``quiet`` silences it and the progress).
    Returns a :class:`JobSummary`; bad settings raise a one-line :class:`RetinaFaceError`.
    """
    started = time.monotonic()
    score_threshold = check_fraction("--score-threshold", score_threshold, error=UsageError)
    _positive("--max-size", max_size, 32)
    _positive("--workers", workers)
    _positive("--threads-per-worker", threads_per_worker)
    try:
        max_pixels = check_max_pixels(max_pixels)
    except RetinaFaceError as exc:
        raise UsageError(str(exc)) from None
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not (isinstance(gpus_per_worker, (int, float)) and math.isfinite(gpus_per_worker) and gpus_per_worker >= 0):
        raise UsageError(f"--gpus-per-worker must be a number >= 0, got {gpus_per_worker!r}")
    crop_size = (int(crop_size), int(crop_size)) if isinstance(crop_size, int) else tuple(int(v) for v in crop_size)
    ray = require_ray(local=not (address or os.environ.get("RAY_ADDRESS")))
    weights, config = _local_path(weights), _local_path(config)
    resolve_weights(weights, config)  # a bad --weights / --config: one line now, not in every actor

    src = location(source, "SOURCE")
    dest = location(output, "--output")
    settings = settings_of(src, score_threshold=score_threshold, max_size=max_size, max_pixels=max_pixels,
                           weights=weights, config=config, crops=crops, crop_size=crop_size)
    resume = check_destination(dest, settings)
    inputs = list_inputs(src, exclude=dest)
    if not inputs.names:
        raise UsageError(f"SOURCE {source}: no images found")
    summary = JobSummary()
    out = sys.stdout if out is None else out
    with _dest_lock(dest):
        start_destination(dest, settings)
        done = done_rows(dest) if resume else {}
        todo = [i for i, name in enumerate(inputs.names) if name not in done]
        summary.skipped = len(inputs.names) - len(todo)
        summary.skipped_refused = sum(done.get(n) is not None for n in inputs.names if n in done)
        if todo:
            with _ray_log_lines_dropped(quiet), _ray_session(ray, address, num_cpus, quiet):
                _execute(ray, inputs, todo, dest, summary, quiet=quiet, workers=workers,
                         threads=threads_per_worker, gpus=float(gpus_per_worker),
                         detector={"weights": weights, "config": config, "score_threshold": score_threshold,
                                   "max_size": max_size, "max_pixels": max_pixels, "runtime": runtime,
                                   "crop_size": crop_size if crops else None})
        rows, distinct = count_rows(dest)
        if rows != distinct:
            raise RetinaFaceError(f"--output {output}: {rows} rows for {distinct} inputs in {FACES}/ "
                                  "(an input written twice); report this")
    summary.seconds = time.monotonic() - started
    if not quiet:
        print(summary.line(output), file=out)
    return summary


# Ray's own log lines: C++ ("[2026-01-01 10:00:00,123 E 123 123] file.cc:12: ...") and Python
# ("2026-01-01 10:00:00,123\tWARNING file.py:12 -- ...")
_RAY_LOG_LINE = re.compile(rb"^(\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] \S+:\d+:"
                           rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ \S+:\d+ -- )")


@contextlib.contextmanager
def _ray_log_lines_dropped(active: bool):
    """``-q``: file descriptor 2 goes to a temporary file while Ray runs; every line but Ray's own
    log lines is replayed after (errors of the job itself are raised, and printed by the caller)."""
    try:
        if not active:
            raise OSError
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not _RAY_LOG_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


class _ray_session:
    """Connect to ``address`` / ``RAY_ADDRESS`` or start a local Ray (127.0.0.1 only); on exit stop
    what was started here through its own handle. An existing connection is used and kept."""

    def __init__(self, ray, address, num_cpus, quiet):
        self.ray, self.address, self.num_cpus, self.quiet = ray, address, num_cpus, quiet
        self.context = None

    def __enter__(self):
        ray = self.ray
        if ray.is_initialized():
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = dict(configure_logging=True, logging_level=logging.ERROR if self.quiet else logging.WARNING,
                      log_to_driver=False)
        if self.quiet:
            logging.getLogger("ray").setLevel(logging.ERROR)
        # read while Ray starts (its processes keep it); the caller's environment is restored after
        env = {} if address else {"RAY_USAGE_STATS_ENABLED": "0"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items() if saved[k] is None})
        try:
            if address:
                self.context = ray.init(address=address, **kwargs)
            else:
                self.context = ray.init(num_cpus=self.num_cpus, include_dashboard=False,
                                        _node_ip_address="127.0.0.1", **kwargs)
        except Exception as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RetinaFaceError(f"cannot start or join {where}: {type(exc).__name__}: "
                                  f"{_one_line(exc)}") from None
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
        return self

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.disconnect()  # ray.shutdown(): a local Ray started here stops with it


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:400] if lines else type(exc).__name__


def _execute(ray, inputs, todo, dest, summary: JobSummary, *, quiet, workers, threads, gpus, detector):
    import pyarrow as pa
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not quiet
    context.print_on_execution_start = not quiet
    context.enable_auto_log_stats = False
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    workers, threads, reserve = plan_workers(node_cpus, workers, threads, gpus)
    summary.workers, summary.threads_per_worker = workers, threads
    table = pa.table({"path": pa.array([inputs.names[i] for i in todo], pa.string()),
                      "file": pa.array([inputs.paths[i] for i in todo], pa.string()),
                      "size": pa.array([inputs.sizes[i] for i in todo], pa.int64())})
    blocks = [table.slice(s, READ_BLOCK) for s in range(0, table.num_rows, READ_BLOCK)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(read_files, fn_kwargs={"filesystem": inputs.source.filesystem,
                                               "max_pixels": detector["max_pixels"]},
                        batch_size=None, batch_format="numpy", num_cpus=READ_CPUS)
    ds = ds.map_batches(_DetectAndWrite, fn_constructor_kwargs={"dest": dest, "threads": threads, **detector},
                        batch_size=ROWS_PER_CALL, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=reserve, num_gpus=gpus or None)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            summary.images += batch.num_rows
            summary.faces += sum(batch.column("faces").to_pylist())
            for path, error in zip(batch.column("path").to_pylist(), batch.column("error").to_pylist()):
                if error is not None:
                    summary.refused += 1
                    if len(summary.errors) < SHOWN_ERRORS:
                        summary.errors.append(error)
    except RetinaFaceError:
        raise
    except ray.exceptions.RayError as exc:
        raise DetectorError(f"the Ray job failed: {_ray_reason(exc)} (finished rows are kept; rerun the same "
                            "command to go on)") from None


def _ray_reason(exc: BaseException) -> str:
    """The root cause of a Ray error as one line."""
    cause = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    return f"{type(cause).__name__}: {_one_line(cause)}"
