"""``show-anchors``: which anchors each face of a training image gets, after the training
augmentation and the matcher the data pipeline uses (``data/augment.py``, ``ops/matcher.py``).

One image of a label file goes through one seeded :func:`retinaface_tf.data.augment.augment`
(or the deterministic ``pad_and_resize``) and :func:`retinaface_tf.ops.matcher.match_anchors`,
exactly as in :func:`retinaface_tf.data.pipeline.build_dataset`. The positive anchors are drawn
per pyramid level on the augmented image (:func:`retinaface_tf.vis.draw.draw_anchor_view`), and
a table counts each face's positives per level, so
faces that no anchor learns from (too small for the smallest anchor, squashed by the resize, or
cropped out) stand out.

Faces are followed through the augmentation by their ``ids`` (the augmentation keeps, drops,
crops and mirrors faces but never renumbers them), and a positive anchor's face is the one the
matcher assigned it (``Match.face_index``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from retinaface_tf.config import AnchorConfig, DataConfig, LossConfig
from retinaface_tf.data import augment as aug
from retinaface_tf.errors import AnchorViewError
from retinaface_tf.ops.anchors import anchor_levels, generate_anchors_np
from retinaface_tf.ops.boxes import center_xywh_to_xyxy
from retinaface_tf.ops.matcher import match_anchors

@dataclasses.dataclass
class FaceMatch:
    """One face of the label-file entry.

    ``index``: its position in the entry; ``box``: pixel ``xyxy`` in the original image;
    ``view_box``: pixel ``xyxy`` in the augmented image (``None`` when the crop dropped it);
    ``positives``: positive anchors per pyramid level.
    """

    index: int
    box: np.ndarray
    view_box: np.ndarray | None
    positives: tuple[int, ...]

    @property
    def total(self) -> int:
        return int(sum(self.positives))

    @property
    def status(self) -> str:
        if self.view_box is None:
            return "cropped out"
        return "NO ANCHOR" if self.total == 0 else "ok"


@dataclasses.dataclass
class AnchorView:
    """The matched anchors of one augmented training image.

    ``image``: uint8 BGR ``[S, S, 3]`` (what the network is fed, plus the mean);
    ``anchors_xyxy`` ``[P, 4]`` float32 pixel ``xyxy`` of the positive anchors (the anchors
    themselves, not their targets); ``anchor_levels`` ``[P]`` int; ``anchor_faces`` ``[P]`` int
    (face index); ``faces``: one :class:`FaceMatch` per face of the entry.
    """

    path: str
    image: np.ndarray
    anchors_xyxy: np.ndarray
    anchor_levels: np.ndarray
    anchor_faces: np.ndarray
    faces: list[FaceMatch]
    steps: tuple[int, ...]
    min_sizes: tuple[tuple[int, ...], ...]
    augmented: bool
    seed: int

    @property
    def unmatched(self) -> list[FaceMatch]:
        """Faces in the augmented image that got no positive anchor."""
        return [f for f in self.faces if f.view_box is not None and f.total == 0]


def find_entry(annotations, image_path: str | os.PathLike):
    """The :class:`~retinaface_tf.data.widerface.ImageAnnotation` of ``image_path``: the entry
    whose relative path ends ``image_path`` (compared by path components), else the only entry
    with the same file name. Raises :class:`AnchorViewError` naming the label file."""
    parts = Path(os.path.abspath(image_path)).parts
    by_suffix = [im for im in annotations.images
                 if tuple(im.path.split("/")) == parts[len(parts) - len(im.path.split("/")):]]
    if len(by_suffix) == 1:
        return by_suffix[0]
    name = Path(image_path).name
    by_name = [im for im in annotations.images if im.path.split("/")[-1] == name]
    if len(by_suffix) > 1 or len(by_name) > 1:
        raise AnchorViewError(f"{annotations.source}: several entries match {image_path}: "
                              f"{', '.join(im.path for im in (by_suffix or by_name)[:3])}")
    if not by_name:
        raise AnchorViewError(f"{annotations.source}: no entry for {image_path} (no '# .../{name}' line"
                              f"{'' if annotations.images else '; the file lists no image with faces'})")
    return by_name[0]


def match_view(contents: bytes, entry, *, seed: int = 0, augment: bool = True, data: DataConfig = DataConfig(),
               anchors: AnchorConfig = AnchorConfig(), loss: LossConfig = LossConfig(),
               source: str = "image") -> AnchorView:
    """Augment one image (encoded ``contents``) with its faces (``entry``: an
    ``ImageAnnotation``) using stateless ``seed`` (or only ``pad_and_resize`` when ``augment`` is
    False), match the faces to the anchors of ``data.image_size``, and return the
    :class:`AnchorView`. ``data``, ``anchors`` and ``loss`` are the config's sections, as the
    data pipeline takes them."""
    size = data.image_size
    contents = tf.constant(contents)
    try:
        if augment:
            image, faces = aug.augment(contents, entry.faces, tf.constant([seed, 0], tf.int64), image_size=size,
                                       bgr_mean=data.bgr_mean, crop_scales=data.crop_scales,
                                       crop_candidates=data.crop_candidates, mirror_probability=data.mirror_probability)
        else:
            image, faces = aug.pad_and_resize(contents, entry.faces, image_size=size, bgr_mean=data.bgr_mean)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
        raise AnchorViewError(f"{source}: TensorFlow cannot decode this image (JPEG, PNG, BMP or GIF "
                              f"needed): {str(exc.message).splitlines()[0]}") from None
    anchor_boxes = generate_anchors_np(size, size, anchors.min_sizes, anchors.steps)
    match = match_anchors(faces, anchor_boxes, match_threshold=loss.match_threshold,
                          force_match_min_iou=loss.force_match_min_iou, variances=anchors.variances)
    positive = np.flatnonzero(match.positive.numpy())
    ids = faces.ids.numpy()
    owner = ids[match.face_index.numpy()[positive]]  # the label-file index of each positive's face
    levels = anchor_levels(size, size, anchors.min_sizes, anchors.steps)[positive]
    anchors_px = center_xywh_to_xyxy(anchor_boxes[positive]) * size

    view_boxes = dict(zip(ids.tolist(), faces.boxes.numpy() * size))
    face_list = []
    for i in range(entry.num_faces):
        counts = tuple(int(np.sum((owner == i) & (levels == lv))) for lv in range(len(anchors.steps)))
        face_list.append(FaceMatch(index=i, box=entry.faces.boxes[i], view_box=view_boxes.get(i), positives=counts))
    # the network input is BGR minus the mean: adding it back gives OpenCV's BGR
    picture = np.clip(image.numpy() + np.asarray(data.bgr_mean, np.float32), 0, 255).round().astype(np.uint8)
    return AnchorView(path=entry.path, image=picture, anchors_xyxy=anchors_px.astype(np.float32),
                      anchor_levels=levels, anchor_faces=owner, faces=face_list, steps=tuple(anchors.steps),
                      min_sizes=tuple(tuple(s) for s in anchors.min_sizes), augmented=augment, seed=seed)


def format_table(view: AnchorView) -> str:
    """Plain-text table: face, original box (pixel ``xyxy``), box size in the augmented image,
    positives per level, total, status; then the faces that got no anchor."""
    levels = [f"s{s}" for s in view.steps]
    header = ["face", "box xyxy (original px)", "w x h (view px)", *levels, "total", "status"]
    rows = []
    for f in view.faces:
        size = "-" if f.view_box is None else f"{f.view_box[2] - f.view_box[0]:.1f} x {f.view_box[3] - f.view_box[1]:.1f}"
        rows.append([str(f.index), " ".join(f"{v:.0f}" for v in f.box), size, *map(str, f.positives),
                     str(f.total), f.status])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if 0 < c < len(header) - 1 and c != 1 else cell.ljust(w)
                       for c, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header, *rows]]
    missing = view.unmatched
    cropped = [f for f in view.faces if f.view_box is None]
    lines.append("")
    if missing:
        lines.append(f"faces with no anchor ({len(missing)} of {len(view.faces) - len(cropped)} in the view): "
                     + ", ".join(str(f.index) for f in missing))
    else:
        lines.append(f"every face in the view got at least one anchor ({len(view.faces) - len(cropped)} faces)")
    if cropped:
        lines.append(f"cropped out by the augmentation: {', '.join(str(f.index) for f in cropped)}")
    return "\n".join(lines)
