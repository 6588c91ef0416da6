"""Datasets beyond one machine: faces of every image of a folder, list or object store on Ray Data.

``FaceDetector`` is the callable class for ``ray.data.Dataset.map_batches``; ``run_job`` runs a
whole ``retinaface-tf detect-dataset`` job (docs/datasets.md). Ray and pyarrow come with the
``ray`` extra and are imported only when a job runs, so this package imports without them.
"""

from retinaface_tf.datasets.detector import FaceDetector
from retinaface_tf.datasets.job import JobSummary, run_job

__all__ = ["FaceDetector", "JobSummary", "run_job"]
