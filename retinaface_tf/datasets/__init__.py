"""Datasets beyond one machine: faces of every image of a folder, list or object store on Ray Data.

``FaceDetector`` is the callable class for ``ray.data.Dataset.map_batches``; ``run_job`` runs a
whole ``retinaface-tf detect-dataset`` job (docs/datasets.md). Ray and pyarrow come with the
``ray`` extra and are imported only when a job runs, so this package imports without them.
"""

__all__ = ["FaceDetector", "JobSummary", "run_job"]


# The names above resolve on first use, not on `import retinaface_tf.datasets`: Ray's read tasks
# import `retinaface_tf.datasets.sources` in every worker process, and importing TensorFlow there
# (3-4 s of CPU each, which the detector actors need) made a 310-photo job 2x slower.
def __getattr__(name):
    if name == "FaceDetector":
        from retinaface_tf.datasets.detector import FaceDetector
        return FaceDetector
    if name in ("JobSummary", "run_job"):
        from retinaface_tf.datasets import job
        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
