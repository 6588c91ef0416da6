"""Stage-by-stage, statistical comparison of our training pipeline with the PyTorch reference's
(biubug6/Pytorch_Retinaface ``train.py``) on the same WIDER images.

Both sides see the same ``--num-images`` images of the label file (a fixed random subset), each
augmented ``--draws`` times at ``--image-size``. The random generators differ (Python ``random``
vs TF stateless seeds), so distributions are compared, not samples: every per-sample quantity is
averaged over an image's draws on each side and the per-image differences give a paired z score
(|z| > 3: beyond sampling noise, marked DIFF); quantiles get a paired bootstrap over images (95 %
interval of ours - reference).

1. augmentation: the reference's ``preproc(img_dim, (104, 117, 123))`` on ``cv2.imread`` images and
   ``WiderFaceDetection`` annotation arrays (its ``_crop`` / ``_mirror`` wrapped to record the crop
   and the flip), vs ``retinaface_tf.data.augment.augment`` on the files' bytes, faces packed as
   ``build_dataset`` packs them (its crop and flip re-derived from its seed split, checked against
   its output: "instrumentation consistent");
2. matching: ``utils/box_utils.match`` (0.35, ``PriorBox(cfg_mnet, (S, S))``) vs the matcher
   ``build_dataset`` calls (``pipeline.encode_faces``), on each side's own samples, and paired
   (exactly) on the reference's augmented faces;
3. loss: one batch of the reference's own DataLoader; both networks with the same weights (the
   reference's ``RetinaFace(cfg_mnet)`` after ``torch.manual_seed``: ImageNet backbone, default
   head init; loaded into Keras with ``load_reference_weights``), training mode: loss terms,
   gradient norms and cosines per group, whole gradient tensors (in float64 on both sides too, the
   identity test; float32 against float64 measures each side's rounding), hard-negative choices,
   one SGD step (updates, BN running statistics, the loss after it); then each side's own
   initialisation: initial loss over ``--init-draws`` draws and whether from-scratch kernels are
   independent draws;
4. schedule and data order: the reference's ``adjust_learning_rate`` (driven by ``train.py``'s
   loop logic) vs the rate our optimizer actually applies at each of the ``epochs x ceil(images /
   batch)`` steps; the order images are drawn in (full permutation vs our shuffle buffer).

The reference side runs in a subprocess under the reference's venv (``--ref-python``; PyTorch,
OpenCV, the reference code on ``sys.path`` and ``torchvision_shim`` on ``PYTHONPATH``) and writes
``ref.npz`` / ``ref.json`` / ``ref_*.pth`` into the work folder, concurrently with our stages 1-2.
About 2-5 minutes on a loaded 2-core machine with the defaults.

usage (from the project root, project venv active):
    nice -n 10 python scripts/compare_pipelines.py [--num-images 200] [--draws 10] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BGR_MEAN = (104.0, 117.0, 123.0)
PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
VARIANCES = (0.1, 0.2)
GROUPS = ("backbone", "fpn", "ssh", "heads")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label-file", default=str(SHARED / "widerface/train5/label.txt"))
    ap.add_argument("--images", default=None, help="default: the label file's folder / images")
    ap.add_argument("--peer", default=str(SHARED / "peer/Pytorch_Retinaface"))
    ap.add_argument("--shim", default=str(SHARED / "peer/torchvision_shim"))
    ap.add_argument("--ref-python", default="/tmp/refenv/bin/python")
    ap.add_argument("--backbone", default=str(SHARED / "reference/mobilenetV1X0.25_pretrain.tar"))
    ap.add_argument("--config", default="mobilenet025_short")
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--decay1", type=int, default=30)
    ap.add_argument("--decay2", type=int, default=36)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="threads per side (the sides run concurrently)")
    ap.add_argument("--init-draws", type=int, default=8, help="initialisations per side for the initial-loss check")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="keep the intermediate files here (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write every compared number here")
    ap.add_argument("--ref-side", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ====================================================================== reference side (torch venv)
def ref_side(a) -> None:
    import copy
    import random

    import cv2
    import torch

    cv2.setNumThreads(a.threads)
    torch.set_num_threads(a.threads)
    work = Path(a.workdir).resolve()
    peer = str(Path(a.peer).resolve())
    sys.path.insert(0, peer)
    # CPU: the reference calls .cuda() unconditionally in its loss
    torch.Tensor.cuda = lambda self, *x, **k: self
    torch.nn.Module.cuda = lambda self, *x, **k: self
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    import data.data_augment as da
    import layers.modules.multibox_loss as mbl
    from data import WiderFaceDetection, detection_collate, preproc
    from data.config import cfg_mnet
    from layers.functions.prior_box import PriorBox
    from utils.box_utils import decode, match

    mbl.GPU = False
    S = a.image_size
    cfg = dict(cfg_mnet, image_size=S, batch_size=a.batch, gpu_train=False, ngpu=1, pretrain=True)
    chosen = json.loads((work / "images.json").read_text())
    label = str(Path(a.label_file).resolve())
    dataset = WiderFaceDetection(label)  # no preproc: __getitem__ returns (image, annotation array)
    root = label.replace("label.txt", "images/")
    index_of = {p[len(root):]: i for i, p in enumerate(dataset.imgs_path)}
    priors = PriorBox(cfg, image_size=(S, S)).forward()
    P = priors.shape[0]

    # instrument _crop / _mirror (preproc looks them up as module globals)
    rec = {}
    orig_crop, orig_mirror = da._crop, da._mirror

    def crop(image, boxes, labels, landm, img_dim):
        out = orig_crop(image, boxes, labels, landm, img_dim)
        rec["pad"] = bool(out[4])
        rec["side"] = max(out[0].shape[:2]) if out[4] else out[0].shape[0]
        rec["short"] = min(image.shape[:2])
        return out

    def mirror(image, boxes, landms):
        out = orig_mirror(image, boxes, landms)
        rec["mirror"] = out[0] is not image
        return out

    da._crop, da._mirror = crop, mirror
    pre = preproc(S, BGR_MEAN)

    def match_one(targets):
        truths = torch.from_numpy(targets[:, :4]).float()
        labels = torch.from_numpy(targets[:, -1]).float()
        landms = torch.from_numpy(targets[:, 4:14]).float()
        loc_t, conf_t, landm_t = torch.Tensor(1, P, 4), torch.LongTensor(1, P), torch.Tensor(1, P, 10)
        match(0.35, truths, priors, list(VARIANCES), labels, landms, loc_t, conf_t, landm_t, 0)
        pos = conf_t[0] != 0
        boxes = decode(loc_t[0][pos], priors[pos], list(VARIANCES))
        if not pos.any():
            return 0, len(truths)
        close = (boxes[:, None, :] - truths[None]).abs().amax(-1) < 1e-4  # positive anchor decodes to the face
        return int(pos.sum()), int(len(truths) - close.any(0).sum())

    t0 = time.time()
    out = {k: [] for k in ("img", "pad", "side", "short", "mirror", "n_faces", "pix_mean", "pix_std", "n_pos",
                           "n_noanchor", "faces_len")}
    faces_all = []
    for i, rel in enumerate(chosen):
        img_t, annot = dataset[index_of[rel]]
        img = img_t.numpy()
        for _ in range(a.draws):
            rec.clear()
            image, targets = pre(img, annot)
            n_pos, n_no = match_one(targets)
            x = image.reshape(3, -1).astype(np.float64)
            for k, v in (("img", i), ("pad", rec["pad"]), ("side", rec["side"]), ("short", rec["short"]),
                         ("mirror", rec["mirror"]), ("n_faces", len(targets)), ("pix_mean", x.mean(1)),
                         ("pix_std", x.std(1)), ("n_pos", n_pos), ("n_noanchor", n_no), ("faces_len", len(targets))):
                out[k].append(v)
            faces_all.append(targets.astype(np.float32))
    t_aug = time.time() - t0
    da._crop, da._mirror = orig_crop, orig_mirror

    # ---- stage 3: one batch of the reference's own DataLoader, its network, its loss
    t0 = time.time()
    os.makedirs(work / "ref_cwd/weights", exist_ok=True)
    link = work / "ref_cwd/weights/mobilenetV1X0.25_pretrain.tar"
    if not link.exists():
        os.symlink(Path(a.backbone).resolve(), link)
    os.chdir(work / "ref_cwd")  # RetinaFace loads ./weights/mobilenetV1X0.25_pretrain.tar
    from models.retinaface import RetinaFace

    torch.manual_seed(a.seed)
    net = RetinaFace(cfg=cfg)
    net.train()
    torch.save(net.state_dict(), work / "ref_init.pth")
    train_set = WiderFaceDetection(label, preproc(S, BGR_MEAN))
    loader = torch.utils.data.DataLoader(train_set, a.batch, shuffle=True, num_workers=0, collate_fn=detection_collate,
                                         generator=torch.Generator().manual_seed(a.seed))
    batches = iter(loader)
    images, targets = next(batches)
    criterion = mbl.MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def group(name):
        return ("backbone" if name.startswith("body.") else "fpn" if name.startswith("fpn.")
                else "ssh" if name.startswith("ssh") else "heads")

    def backward(model, imgs, tgts, dtype):
        """Loss terms, parameter gradients and the mined selection (anchors whose class logits get
        a gradient: positives + hard negatives) of one training-mode forward / backward."""
        torch.set_default_dtype(dtype)  # match() fills torch.Tensor buffers
        try:
            out_l, out_c, out_m = model(imgs.to(dtype))
            out_c.retain_grad()
            l, c, m = criterion((out_l, out_c, out_m), priors.to(dtype), [t.to(dtype) for t in tgts])
            model.zero_grad()
            (cfg["loc_weight"] * l + c + m).backward()
        finally:
            torch.set_default_dtype(torch.float32)
        terms = {"total": float(cfg["loc_weight"] * l + c + m), "loc": float(l), "conf": float(c), "landm": float(m)}
        grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
        return terms, grads, (out_c.grad != 0).any(-1).numpy()

    # copies first: every training forward updates the BN running statistics of the model it runs
    net64 = copy.deepcopy(net).double()
    net_b2 = copy.deepcopy(net)
    loss64, grads64, selected64 = backward(net64, images, targets, torch.float64)  # rounding-free reference
    images2, targets2 = next(batches)
    _, grads_b2, _ = backward(net_b2, images2, targets2, torch.float32)  # another batch: sampling noise scale
    del net64, net_b2
    terms32, grads32, selected = backward(net, images, targets, torch.float32)
    grad_sq = dict.fromkeys(GROUPS, 0.0)
    grads = {}
    for name, g in grads32.items():
        n2 = float((g.astype(np.float64) ** 2).sum())
        grads[name] = math.sqrt(n2)
        grad_sq[group(name)] += n2
    np.savez(work / "ref_grads.npz", selected=selected, selected64=selected64,
             **{f"f32/{k}": v for k, v in grads32.items()}, **{f"f64/{k}": v for k, v in grads64.items()},
             **{f"b2/{k}": v for k, v in grads_b2.items()})
    optimizer.step()
    torch.save(net.state_dict(), work / "ref_step1.pth")  # weights + BN running stats after 1 train step
    with torch.no_grad():
        l2, c2, m2 = criterion(net(images), priors, targets)
    # the initial loss over several default initialisations (ImageNet backbone, heads drawn anew)
    init_losses = []
    with torch.no_grad():
        for k in range(a.init_draws):
            torch.manual_seed(10_000 + k)
            net_k = RetinaFace(cfg=cfg)
            net_k.train()
            lk, ck, mk = criterion(net_k(images), priors, targets)
            init_losses.append({"total": float(cfg["loc_weight"] * lk + ck + mk), "loc": float(lk), "conf": float(ck)})
    # positives of the batch (the loss's normaliser N)
    num_pos = 0
    for t in targets:
        num_pos += match_one(t.numpy().astype(np.float64))[0]
    t_loss = time.time() - t0

    # ---- stage 4: train.py's learning-rate logic, adjust_learning_rate taken verbatim from train.py
    src = Path(peer, "train.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "adjust_learning_rate")
    ns = {"initial_lr": 1e-3}  # train.py: --lr default 1e-3
    exec(compile(ast.Module([fn], []), "train.py", "exec"), ns)

    class _Opt:
        param_groups = [{}]

    n_images = len(train_set)
    epoch_size = math.ceil(n_images / a.batch)
    max_iter = a.epochs * epoch_size
    stepvalues = (a.decay1 * epoch_size, a.decay2 * epoch_size)
    epoch, step_index, lrs = 0, 0, []
    for iteration in range(max_iter):  # the loop of train.py's train()
        if iteration % epoch_size == 0:
            epoch += 1
        if iteration in stepvalues:
            step_index += 1
        lrs.append(ns["adjust_learning_rate"](_Opt, 0.1, epoch, step_index, iteration, epoch_size))

    # data order: train.py's DataLoader(shuffle=True) draws a full permutation per epoch
    sampler = torch.utils.data.RandomSampler(train_set, generator=torch.Generator().manual_seed(a.seed))
    order = np.concatenate([np.fromiter(iter(sampler), np.int64) for _ in range(20)])

    np.savez_compressed(
        work / "ref.npz", **{k: np.asarray(v) for k, v in out.items()}, faces=np.concatenate(faces_all),
        priors=priors.numpy(), batch_images=images.permute(0, 2, 3, 1).contiguous().numpy(),
        batch_faces=np.concatenate([t.numpy() for t in targets]), batch_len=np.asarray([len(t) for t in targets]),
        lr=np.asarray(lrs, np.float64), order=order)
    (work / "ref.json").write_text(json.dumps({
        "loss": terms32,
        "loss_float64": loss64, "init_losses": init_losses,
        "loss_after_step": {"total": float(2 * l2 + c2 + m2), "loc": float(l2), "conf": float(c2), "landm": float(m2)},
        "grad_norm": {g: math.sqrt(v) for g, v in grad_sq.items()}, "grad_tensor": grads,
        "batch_positives": num_pos, "n_images": n_images, "epoch_size": epoch_size,
        "seconds": {"augment+match": t_aug, "loss": t_loss}}))


# ====================================================================== our side (project venv)
def _find(name: str):
    """``name`` from ``retinaface_tf.training`` (a module, or after the refactor a package: its
    submodules are searched)."""
    import importlib
    import pkgutil

    mod = importlib.import_module("retinaface_tf.training")
    if hasattr(mod, name):
        return getattr(mod, name)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), mod.__name__ + "."):
        sub = importlib.import_module(info.name)
        if hasattr(sub, name):
            return getattr(sub, name)
    raise ImportError(f"{name} not found in retinaface_tf.training")


def _keras_group(layer_name: str) -> str:
    if layer_name.startswith("stage"):
        return "backbone"
    if layer_name.startswith("fpn_"):
        return "fpn"
    if layer_name.startswith("ssh"):
        return "ssh"
    return "heads"


def _torch_name(layer_name: str, var_name: str) -> str:
    from retinaface_tf.convert.mapping import torch_prefix

    suffix = {"kernel": "weight", "depthwise_kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var"}[var_name]
    return f"{torch_prefix(layer_name)}.{suffix}"


def _variables(model):
    """``[(keras variable, layer name, torch name)]`` of every weight (trainable or not)."""
    out = []

    def walk(m, prefix):
        for layer in m.layers:
            if hasattr(layer, "layers") and layer.layers:
                walk(layer, "body.")  # the backbone sub-model: the reference's IntermediateLayerGetter
            else:
                for v in layer.weights:
                    out.append((v, layer.name, prefix + _torch_name(layer.name, v.name)))

    walk(model, "")
    return out


def _to_torch_layout(arr: np.ndarray, torch_arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:
        if torch_arr.shape[1] == 1 and arr.shape[3] == 1:  # depthwise [kh,kw,C,1] -> [C,1,kh,kw]
            return np.transpose(arr, (2, 3, 0, 1))
        return np.transpose(arr, (3, 2, 0, 1))  # [kh,kw,I,O] -> [O,I,kh,kw]
    return arr


# ---- adapters: the pipeline's face and target formats. Up to 53d4850 faces are [F, 15] arrays and
# encode_faces returns one target dict whose entries carry the label; the refactor under way carries
# retinaface_tf.ops.faces.Faces and returns (targets, masks). Both are handled here and only here.
def _settings(cfg) -> dict:
    d, lo = cfg.data, cfg.loss
    mean = getattr(d, "bgr_mean", None) or getattr(d, "rgb_mean")  # renamed to bgr_mean in 53d4850
    return dict(image_size=d.image_size, bgr_mean=tuple(float(x) for x in mean), crop_scales=tuple(d.crop_scales),
                crop_candidates=d.crop_candidates, mirror_probability=d.mirror_probability,
                match_threshold=lo.match_threshold, force_match_min_iou=lo.force_match_min_iou,
                variances=tuple(cfg.anchors.variances))


def _faces_from_array(flat):
    """[F, 15] tensor (xyxy, 10 landmark coordinates, label 1 / -1) → the pipeline's face format."""
    import tensorflow as tf

    try:
        from retinaface_tf.ops.faces import Faces
    except ImportError:
        return flat
    return Faces(flat[:, :4], tf.reshape(flat[:, 4:14], [-1, 5, 2]), flat[:, 14] > 0,
                 tf.range(tf.shape(flat)[0], dtype=tf.int32))


def _boxes(faces):
    return faces.boxes if hasattr(faces, "boxes") else faces[:, :4]


def _encode(faces, anchors, s):
    """pipeline.encode_faces → (what the loss takes, box deltas [N, 4], positive [N] bool)."""
    import tensorflow as tf

    from retinaface_tf.data.pipeline import encode_faces

    out = encode_faces(faces, anchors, match_threshold=s["match_threshold"],
                       force_match_min_iou=s["force_match_min_iou"], variances=s["variances"])
    if isinstance(out, tuple):  # (targets, masks)
        targets, masks = out
        return out, targets["bbox"][:, :4], masks["bbox"] > 0
    return out, out["bbox"][:, :4], tf.cast(tf.round(out["classes"]), tf.int32) != 0


def _terms(loss_fn, y, pred) -> dict:
    return loss_fn.terms(y[0], pred, y[1]) if isinstance(y, tuple) else loss_fn.terms(y, pred)


def our_augment(a, cfg, images, images_dir, anchors):
    """Stage 1-2 on our side: per-sample records like the reference side's."""
    import tensorflow as tf

    from retinaface_tf.data import augment as aug
    from retinaface_tf.data.pipeline import faces_ragged
    from retinaface_tf.ops.image import image_shape

    kw = _settings(cfg)
    rt = faces_ragged(images)  # as build_dataset packs them (a ragged tensor, or Faces of ragged tensors)
    paths = tf.constant([os.path.join(images_dir, *im.path.split("/")) for im in images])
    anchors_t = tf.constant(anchors)
    n = len(images) * a.draws

    def one(k):
        i = k // a.draws
        faces = tf.nest.map_structure(lambda r: r.flat_values[r.row_splits[i]:r.row_splits[i + 1]], rt)
        contents = tf.io.read_file(paths[i])
        seed = tf.stack([tf.constant(a.seed, tf.int64) + 1_000_003, k])
        image, out_faces = aug.augment(contents, faces, seed, image_size=kw["image_size"], bgr_mean=kw["bgr_mean"],
                                       crop_scales=kw["crop_scales"], crop_candidates=kw["crop_candidates"],
                                       mirror_probability=kw["mirror_probability"])
        out_boxes = _boxes(out_faces)
        _, box_t, pos = _encode(out_faces, anchors_t, kw)
        # instrumentation: augment's own crop and mirror draws, re-derived from its seed split; checked
        # below against its output boxes
        s_crop, _, _, s_mirror = tf.unstack(aug._split(seed, 4))
        b0 = _boxes(aug.drop_empty_faces(faces))
        hw = image_shape(contents)
        found, window, keep = aug.sample_square_crop(b0, hw[0], hw[1], s_crop, scales=kw["crop_scales"],
                                                     num_candidates=kw["crop_candidates"])
        flip = tf.random.stateless_uniform([], s_mirror) < kw["mirror_probability"]
        side = tf.reduce_max(window[2:])
        pred = tf.boolean_mask(b0, keep)
        origin = tf.cast(tf.stack([window[1], window[0], window[1], window[0]]), tf.float32)
        limit = tf.cast(tf.stack([window[3], window[2], window[3], window[2]]), tf.float32)
        pred = tf.where(found, tf.clip_by_value(pred - origin, 0.0, limit), pred) / tf.cast(side, tf.float32)
        pred = tf.where(flip, tf.stack([1 - pred[:, 2], pred[:, 1], 1 - pred[:, 0], pred[:, 3]], 1), pred)
        pred = tf.clip_by_value(pred, 0.0, 1.0)
        pred = tf.boolean_mask(pred, (pred[:, 2] > pred[:, 0]) & (pred[:, 3] > pred[:, 1]))
        consistent = tf.cond(
            tf.shape(pred)[0] == tf.shape(out_boxes)[0],
            lambda: tf.reduce_all(tf.abs(pred - out_boxes) < 1e-4), lambda: tf.constant(False))
        cover = _coverage(box_t, anchors_t, out_boxes, pos)
        x = tf.reshape(image, [-1, 3])
        mean = tf.reduce_mean(x, 0)
        std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), 0))
        return dict(img=i, pad=tf.logical_not(found), side=side, short=tf.reduce_min(hw), mirror=flip,
                    n_faces=tf.shape(out_boxes)[0], pix_mean=mean, pix_std=std,
                    n_pos=tf.reduce_sum(tf.cast(pos, tf.int32)),
                    n_noanchor=tf.shape(out_boxes)[0] - tf.reduce_sum(tf.cast(cover, tf.int32)),
                    faces=out_boxes, consistent=consistent)

    ds = tf.data.Dataset.range(n).map(one, num_parallel_calls=max(1, a.threads), deterministic=True)
    out = {}
    faces = []
    for rec in ds.as_numpy_iterator():
        faces.append(rec.pop("faces"))
        for k, v in rec.items():
            out.setdefault(k, []).append(v)
    out = {k: np.asarray(v) for k, v in out.items()}
    out["faces_len"] = np.asarray([len(f) for f in faces])
    out["faces"] = np.concatenate(faces) if faces else np.zeros((0, 4), np.float32)
    return out


def _coverage(box_t, anchors, faces, pos):
    """``[F]`` bool: faces that some positive anchor's encoded box target decodes to."""
    import tensorflow as tf

    v0, v1 = VARIANCES
    cxcy = anchors[:, :2] + box_t[:, :2] * v0 * anchors[:, 2:]
    wh = anchors[:, 2:] * tf.exp(box_t[:, 2:] * v1)
    boxes = tf.concat([cxcy - wh / 2, cxcy + wh / 2], 1)
    boxes = tf.boolean_mask(boxes, pos)
    close = tf.reduce_max(tf.abs(boxes[:, None, :] - faces[None, :, :]), -1) < 1e-4
    return tf.reduce_any(close, 0)


def our_match_ref_faces(ref, anchors, cfg):
    """Paired check: our matcher (as build_dataset calls it) on the reference's augmented faces."""
    import tensorflow as tf

    kw = _settings(cfg)
    anchors_t = tf.constant(anchors)
    splits = np.concatenate([[0], np.cumsum(ref["faces_len"])])
    flat, splits_t = tf.constant(ref["faces"]), tf.constant(splits)

    def one(k):
        faces = flat[splits_t[k]:splits_t[k + 1]]
        _, box_t, pos = _encode(_faces_from_array(faces), anchors_t, kw)
        cover = _coverage(box_t, anchors_t, faces[:, :4], pos)
        return tf.reduce_sum(tf.cast(pos, tf.int32)), tf.shape(faces)[0] - tf.reduce_sum(tf.cast(cover, tf.int32))

    ds = tf.data.Dataset.range(len(ref["faces_len"])).map(one, num_parallel_calls=2, deterministic=True)
    r = np.asarray(list(ds.as_numpy_iterator()))
    return r[:, 0], r[:, 1]


def our_loss(a, cfg, ref, ref_json, work, anchors):
    """Stage 3 on our side, on the reference's batch, with the reference's initial weights."""
    import keras
    import tensorflow as tf

    from retinaface_tf.convert.mapping import load_reference_weights
    from retinaface_tf.convert.torch_weights import load_torch_checkpoint
    from retinaface_tf.losses import MultiBoxLoss
    from retinaface_tf.models import build_from_config

    kw = _settings(cfg)
    images = ref["batch_images"]
    splits = np.concatenate([[0], np.cumsum(ref["batch_len"])])
    per = [_encode(_faces_from_array(tf.constant(ref["batch_faces"][splits[i]:splits[i + 1]])),
                   tf.constant(anchors), kw) for i in range(len(ref["batch_len"]))]
    y = tf.nest.map_structure(lambda *t: tf.stack(t), *[p[0] for p in per])
    positive = tf.stack([p[2] for p in per])
    lo = cfg.loss
    loss_fn = MultiBoxLoss(neg_pos_ratio=lo.neg_pos_ratio, loc_weight=lo.loc_weight, landmark_weight=lo.landmark_weight)
    rg = np.load(work / "ref_grads.npz")

    def fresh(dtype="float32"):
        keras.config.set_dtype_policy(dtype)
        try:
            model = build_from_config(cfg)
        finally:
            keras.config.set_dtype_policy("float32")
        load_reference_weights(model, work / "ref_init.pth")
        return model

    def backward(model, selected=None):
        """Loss terms, gradients (torch names and layouts) and the anchors whose class logits get
        a gradient. ``selected`` ([B, N] bool: positives + hard negatives) replaces our hard-negative
        mining in the class term, to compare gradients without tie-breaking differences."""
        x = tf.constant(images, model.trainable_variables[0].dtype)
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            t = _terms(loss_fn, y, pred)
            if selected is not None:
                logits = tf.cast(pred["classes"], tf.float32)
                lse = tf.reduce_logsumexp(logits, -1)
                ce = tf.where(positive, lse - logits[..., 1], lse - logits[..., 0])
                t["classes"] = tf.reduce_sum(tf.where(tf.constant(selected), ce, 0.0)) / tf.maximum(
                    tf.reduce_sum(tf.cast(positive, tf.float32)), 1.0)
            total = lo.loc_weight * t["bbox"] + t["classes"] + lo.landmark_weight * t["landmarks"]
        g = tape.gradient(total, model.trainable_variables + [pred["classes"]])
        names = {id(v): (layer, tname) for v, layer, tname in _variables(model)}
        grads = {}
        for v, gv in zip(model.trainable_variables, g[:-1]):
            layer, tname = names[id(v)]
            torch_layout = _to_torch_layout(np.asarray(gv.numpy(), np.float64), rg[f"f32/{tname}"])
            grads[tname] = (_keras_group(layer), torch_layout, gv)
        values = {"total": float(total), "loc": float(t["bbox"]), "conf": float(t["classes"]),
                  "landm": float(t["landmarks"])}
        return values, grads, np.any(g[-1].numpy() != 0, -1), pred["classes"]

    def rel_l2(x, y_):
        return float(np.linalg.norm(x - y_) / max(np.linalg.norm(y_), 1e-30))

    res = {"batch_positives": int(tf.reduce_sum(tf.cast(positive, tf.int32)))}
    model = fresh()
    variables = _variables(model)
    res["loss"], grads, sel_ours, logits = backward(model)  # exactly one training forward before the step
    sq = dict.fromkeys(GROUPS, 0.0)
    for tname, (grp, g, _) in grads.items():
        sq[grp] += float((g ** 2).sum())
    res["grad_norm"] = {k: math.sqrt(v) for k, v in sq.items()}
    cos = {}
    for grp in GROUPS:
        o = np.concatenate([g.ravel() for gg, g, _ in grads.values() if gg == grp])
        r = np.concatenate([rg[f"f32/{k}"].ravel() for k, (gg, _, _) in grads.items() if gg == grp]).astype(np.float64)
        cos[grp] = float(o @ r / (np.linalg.norm(o) * np.linalg.norm(r)))
    res["grad_cosine"] = cos

    # hard negatives: which anchors each side's mining picked; the background loss of those picked
    # by one side only (nearly equal values = near-ties broken differently)
    sel_ref = rg["selected"]
    ce_bg = (tf.reduce_logsumexp(logits, -1) - logits[..., 0]).numpy()
    spread = 0.0
    for b in range(sel_ref.shape[0]):
        swapped = ce_bg[b][sel_ref[b] != sel_ours[b]]
        if swapped.size:
            spread = max(spread, float(swapped.max() - swapped.min()))
    res["mining"] = {"selected_ref": int(sel_ref.sum()), "selected_ours": int(sel_ours.sum()),
                     "ref_only": int((sel_ref & ~sel_ours).sum()), "ours_only": int((sel_ours & ~sel_ref).sum()),
                     "images_with_swaps": int(np.any(sel_ref != sel_ours, 1).sum()), "swapped_ce_spread": spread,
                     "ref_f32_vs_f64_selection_differs": int((rg["selected"] != rg["selected64"]).sum())}

    # gradient tensors: the same network in float64 (given the reference's float64 negatives) is the
    # identity test; float32 against float64 on each side is that side's rounding error
    _, g_sel32, _, _ = backward(fresh(), selected=sel_ref)
    _, g_sel64, _, _ = backward(fresh("float64"), selected=rg["selected64"])
    names = [k for k in grads if np.linalg.norm(rg[f"f64/{k}"]) > 0]  # the landmark head gets no gradient here
    res["grad_tensor_rel_l2"] = {
        "names": names, "missing": sorted({k.split("/", 1)[1] for k in rg.files if "/" in k} - set(grads)),
        "ours64_vs_ref64": [rel_l2(g_sel64[k][1], rg[f"f64/{k}"]) for k in names],
        "ref32_vs_ref64": [rel_l2(rg[f"f32/{k}"].astype(np.float64), rg[f"f64/{k}"]) for k in names],
        "ours32_vs_ref64": [rel_l2(g_sel32[k][1], rg[f"f64/{k}"]) for k in names],
        "ours32_vs_ref32": [rel_l2(grads[k][1], rg[f"f32/{k}"]) for k in names],
        "ref_batch2_vs_batch1": [rel_l2(rg[f"b2/{k}"].astype(np.float64), rg[f"f32/{k}"]) for k in names]}

    # one optimizer step, as training builds the optimizer; then weights and BN statistics
    make_optimizer = _find("make_optimizer")
    t = cfg.train
    steps = math.ceil(ref_json["n_images"] / t.batch_size)
    opt = make_optimizer(learning_rate=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
                         steps_per_epoch=steps, decay_epochs=t.decay_epochs, decay_factor=t.decay_factor,
                         warmup_epochs=t.warmup_epochs, global_batch=t.batch_size)
    by_name = {tname: v for v, _, tname in variables}
    opt.apply_gradients([(grads[k][2], by_name[k]) for k in grads])
    init_sd = load_torch_checkpoint(str(work / "ref_init.pth"))
    sd = load_torch_checkpoint(str(work / "ref_step1.pth"))
    diff = {"weight update": [], "running_mean": [], "running_var": []}
    for v, _, tname in variables:
        theirs = np.asarray(sd[tname], np.float64)
        ours = _to_torch_layout(np.asarray(v.numpy(), np.float64), theirs)
        if tname.endswith(("running_mean", "running_var")):  # BN statistics after one training forward
            rel_max = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12))
            diff[tname.rsplit(".", 1)[1]].append(rel_max)
        elif tname in names:  # the SGD update (w1 - w0): relative L2 difference per tensor
            before = np.asarray(init_sd[tname], np.float64)
            diff["weight update"].append(rel_l2(ours - before, theirs - before))
    res["after_step_rel_diff"] = {k: (float(np.median(v)), float(np.max(v))) for k, v in diff.items()}
    res["loss_after_step"] = backward(model)[0]

    # each side's own initialisation: ours = what training does (seeded head init + ImageNet backbone)
    load_initial_weights = _find("load_initial_weights")
    keras.utils.set_random_seed(t.seed)
    own = build_from_config(cfg)
    load_initial_weights(own, backbone_weights=a.backbone)
    std = {"ours": {}, "reference": {}}
    for g in ("fpn", "ssh", "heads"):
        kernels = [(v, tn) for v, layer, tn in _variables(own) if _keras_group(layer) == g and v.name == "kernel"]
        std["ours"][g] = float(np.concatenate([np.asarray(v.numpy()).ravel() for v, _ in kernels]).std())
        std["reference"][g] = float(np.concatenate([np.asarray(init_sd[tn]).ravel() for _, tn in kernels]).std())
    res["init_kernel_std"] = std

    # the initial loss over several initialisations, as training makes them (seed set, then the
    # model built; the shared kernel initialiser's seed is drawn from Python's random when
    # retinaface_tf.models is first imported, which in `retinaface-tf train` happens after the seed
    # is set: a fresh instance drawn after set_random_seed stands for that), and with an
    # independent stream per layer (a SeedGenerator-seeded initialiser), to tell what the shared
    # stream does
    import importlib
    import sys as _sys

    importlib.import_module("retinaface_tf.models.layers")
    shared = getattr(_sys.modules["retinaface_tf.models.layers"], "TORCH_CONV_INIT", None)
    holders = [m for name, m in list(_sys.modules.items())
               if name.startswith("retinaface_tf.models") and getattr(m, "TORCH_CONV_INIT", None) is shared]
    cfg_init = dict(shared.get_config()) if shared is not None else {}
    cfg_init.pop("seed", None)
    losses = {"as_trained": [], "independent": []}
    for kind in losses:
        for k in range(a.init_draws if shared is not None else 0):  # no shared initialiser: nothing to test
            keras.utils.set_random_seed(10_000 + k)
            seed = keras.random.SeedGenerator(10_000 + k) if kind == "independent" else None
            init = keras.initializers.VarianceScaling(**cfg_init, seed=seed)
            for m in holders:
                m.TORCH_CONV_INIT = init
            try:
                mk = build_from_config(cfg)
            finally:
                for m in holders:
                    m.TORCH_CONV_INIT = shared
            load_initial_weights(mk, backbone_weights=a.backbone)
            pred = mk(tf.constant(images), training=True)
            tk = _terms(loss_fn, y, pred)
            total = lo.loc_weight * tk["bbox"] + tk["classes"] + lo.landmark_weight * tk["landmarks"]
            losses[kind].append({"total": float(total), "loc": float(tk["bbox"]), "conf": float(tk["classes"])})
    res["init_losses"] = losses

    # independence of the from-scratch kernels: a kernel whose leading values are proportional to
    # another layer's (correlation > 0.999) came from the same random stream
    def shared_streams(kernels):
        flat = [np.asarray(k, np.float64).ravel() for k in kernels]
        n = 0
        for i, x in enumerate(flat):
            for j, z in enumerate(flat):
                m = min(len(x), len(z))
                if i != j and m >= 8 and abs(np.corrcoef(x[:m], z[:m])[0, 1]) > 0.999:
                    n += 1
                    break
        return n

    scratch = [(v, tn) for v, layer, tn in _variables(own) if _keras_group(layer) != "backbone" and v.name == "kernel"]
    res["shared_init_streams"] = {
        "n": len(scratch),
        "ours": shared_streams([v.numpy() for v, _ in scratch]),
        # the reference's layout [O, I, kh, kw]: compare in ours ([kh, kw, I, O]) to use the same order
        "reference": shared_streams([np.transpose(np.asarray(init_sd[tn]), (2, 3, 1, 0)) for _, tn in scratch])}
    return res


def order_stats(order: np.ndarray, n: int) -> dict:
    """How much a stream of image indices (consecutive passes of ``n``) keeps the label file's
    order: Spearman correlation of index and position within a pass, and the mean relative
    position of the last 20 % of the label file's images (0.5 when uniform)."""
    passes = order[: len(order) // n * n].reshape(-1, n)
    corr, tail = [], []
    last = np.arange(n) >= int(0.8 * n)
    for p in passes:
        pos = np.empty(n)
        pos[p] = np.arange(n) / (n - 1)  # position of each image index in this pass
        corr.append(np.corrcoef(np.arange(n), pos)[0, 1])  # index is a rank already; pos too
        tail.append(pos[last].mean())
    return {"corr": float(np.mean(corr)), "corr_sd": float(np.std(corr)), "tail": float(np.mean(tail)),
            "passes": len(passes)}


def our_order(cfg, n: int, seed: int, passes: int = 20) -> np.ndarray:
    """build_dataset's file order (``shuffle(data.shuffle_buffer, reshuffle_each_iteration)`` then
    ``repeat``) on indices instead of files."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(n).shuffle(cfg.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    return np.fromiter(ds.take(passes * n).as_numpy_iterator(), np.int64)


def our_lr(a, cfg, n_images):
    """Stage 4: the rate our optimizer applies at each step (momentum and weight decay off, so
    the update of a variable with gradient 1 is the rate itself)."""
    import keras
    import tensorflow as tf

    make_optimizer = _find("make_optimizer")
    t = cfg.train
    steps = math.ceil(n_images / t.batch_size)
    opt = make_optimizer(learning_rate=t.learning_rate, momentum=0.0, weight_decay=0.0, steps_per_epoch=steps,
                         decay_epochs=(a.decay1, a.decay2), decay_factor=t.decay_factor,
                         warmup_epochs=t.warmup_epochs, global_batch=t.batch_size)
    v = keras.Variable(0.0, dtype="float32")
    one = tf.ones([], tf.float32)

    @tf.function
    def step():
        v.assign(0.0)
        opt.apply_gradients([(one, v)])
        return -v.value

    return np.asarray([float(step()) for _ in range(a.epochs * steps)]), steps


# ====================================================================== statistics and table
def paired(ref_vals, our_vals, ref_img, our_img, n_img):
    """Per-image means over draws, paired over images: (ref mean, ours mean, z of ours - ref)."""
    def per_image(v, img):
        s = np.bincount(img, weights=v.astype(np.float64), minlength=n_img)
        c = np.bincount(img, minlength=n_img)
        return s / np.maximum(c, 1), c > 0

    r, rok = per_image(ref_vals, ref_img)
    o, ook = per_image(our_vals, our_img)
    ok = rok & ook
    d = o[ok] - r[ok]
    se = d.std(ddof=1) / math.sqrt(ok.sum()) if ok.sum() > 1 else float("nan")
    z = d.mean() / se if se > 0 else (0.0 if d.mean() == 0 else float("inf"))
    return float(np.mean(ref_vals)), float(np.mean(our_vals)), float(z)


def bootstrap_quantiles(ref_x, ref_img, our_x, our_img, n_img, qs, reps, seed):
    """Quantiles of per-face values and a paired image-bootstrap 95 % interval of ours - ref."""
    rng = np.random.default_rng(seed)
    ref_by = [ref_x[ref_img == i] for i in range(n_img)]
    our_by = [our_x[our_img == i] for i in range(n_img)]
    base = (np.quantile(ref_x, qs), np.quantile(our_x, qs))
    diffs = []
    for _ in range(reps):
        pick = rng.integers(0, n_img, n_img)
        r = np.concatenate([ref_by[i] for i in pick])
        o = np.concatenate([our_by[i] for i in pick])
        diffs.append(np.quantile(o, qs) - np.quantile(r, qs))
    lo, hi = np.percentile(np.asarray(diffs), [2.5, 97.5], axis=0)
    return base[0], base[1], lo, hi


def scale_category(side, short, pad):
    """Index of the crop scale in PRE_SCALES (int(scale * short) truncation undone), 5 = padded."""
    ratio = np.asarray(side, np.float64) / np.maximum(np.asarray(short, np.float64), 1)
    cat = np.argmin(np.abs(ratio[:, None] - np.asarray(PRE_SCALES)[None, :]), axis=1)
    return np.where(pad, len(PRE_SCALES), cat), ratio


def build_rows(a, ref, ours, n_img, S):
    rows = []  # (section, name, ref, ours, test string, verdict)

    def add_paired(section, name, rv, ov, fmt="{:.3f}", ri=None, oi=None):
        r, o, z = paired(np.asarray(rv, np.float64), np.asarray(ov, np.float64),
                         ref["img"] if ri is None else ri, ours["img"] if oi is None else oi, n_img)
        rows.append((section, name, fmt.format(r), fmt.format(o), f"z={z:+.1f}", "DIFF" if abs(z) > 3 else "ok"))

    rcat, rratio = scale_category(ref["side"], ref["short"], ref["pad"])
    ocat, oratio = scale_category(ours["side"], ours["short"], ours["pad"])
    for c, sc in enumerate(PRE_SCALES):
        add_paired("1 augment", f"crop scale {sc} chosen", rcat == c, ocat == c)
    add_paired("1 augment", "no crop fits: whole image padded", ref["pad"], ours["pad"])
    add_paired("1 augment", "crop side / short side (crops only)", rratio[~ref["pad"]], oratio[~ours["pad"]],
               ri=ref["img"][~ref["pad"]], oi=ours["img"][~ours["pad"]])
    add_paired("1 augment", "faces kept per sample", ref["n_faces"], ours["n_faces"])
    add_paired("1 augment", "samples with 0 faces", ref["n_faces"] == 0, ours["n_faces"] == 0, fmt="{:.4f}")
    add_paired("1 augment", "mirror rate", ref["mirror"], ours["mirror"])

    def face_arrays(side):
        f = side["faces"][:, :4].astype(np.float64)
        img = np.repeat(side["img"], side["faces_len"])
        size = np.sqrt(np.clip(f[:, 2] - f[:, 0], 0, None) * np.clip(f[:, 3] - f[:, 1], 0, None)) * S
        return f, img, size

    rf, rimg, rsize = face_arrays(ref)
    of, oimg, osize = face_arrays(ours)
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    rq, oq, lo, hi = bootstrap_quantiles(rsize, rimg, osize, oimg, n_img, qs, a.bootstrap, a.seed)
    for q, r_, o_, l_, h_ in zip(qs, rq, oq, lo, hi):
        rows.append(("1 augment", f"face size sqrt(w*h) px, q{int(q * 100):02d}", f"{r_:.1f}", f"{o_:.1f}",
                     f"95% [{l_:+.1f}, {h_:+.1f}]", "ok" if l_ <= 0 <= h_ else "DIFF"))
    for thr in (8, 16):
        add_paired("1 augment", f"faces < {thr} px (fraction of faces)", rsize < thr, osize < thr, ri=rimg, oi=oimg)
    for c, ch in enumerate("BGR"):
        add_paired("1 augment", f"pixel mean {ch} (minus mean)", ref["pix_mean"][:, c], ours["pix_mean"][:, c],
                   fmt="{:.2f}")
    for c, ch in enumerate("BGR"):
        add_paired("1 augment", f"pixel std {ch} (per sample)", ref["pix_std"][:, c], ours["pix_std"][:, c],
                   fmt="{:.2f}")
    for j, nm in enumerate(("x1", "y1", "x2", "y2")):
        rows.append(("1 augment", f"box {nm} range", f"[{rf[:, j].min():.3f}, {rf[:, j].max():.3f}]",
                     f"[{of[:, j].min():.3f}, {of[:, j].max():.3f}]", "", ""))
    add_paired("1 augment", "box coords outside [0,1] (fraction of faces)",
               ((rf < 0) | (rf > 1)).any(1), ((of < 0) | (of > 1)).any(1), fmt="{:.4f}", ri=rimg, oi=oimg)
    add_paired("1 augment", "box width or height <= 0 (fraction)", (rf[:, 2] <= rf[:, 0]) | (rf[:, 3] <= rf[:, 1]),
               (of[:, 2] <= of[:, 0]) | (of[:, 3] <= of[:, 1]), fmt="{:.4f}", ri=rimg, oi=oimg)

    add_paired("2 match", "positive anchors per sample (mean)", ref["n_pos"], ours["n_pos"], fmt="{:.2f}")
    for q in (0.1, 0.5, 0.9):
        rows.append(("2 match", f"positive anchors per sample q{int(q * 100):02d}",
                     f"{np.quantile(ref['n_pos'], q):.0f}", f"{np.quantile(ours['n_pos'], q):.0f}", "", ""))
    add_paired("2 match", "samples with 0 positives", ref["n_pos"] == 0, ours["n_pos"] == 0, fmt="{:.4f}")
    r_no = np.bincount(ref["img"], weights=ref["n_noanchor"], minlength=n_img)
    o_no = np.bincount(ours["img"], weights=ours["n_noanchor"], minlength=n_img)
    r_nf = np.bincount(ref["img"], weights=ref["n_faces"], minlength=n_img)
    o_nf = np.bincount(ours["img"], weights=ours["n_faces"], minlength=n_img)
    ok = (r_nf > 0) & (o_nf > 0)
    d = o_no[ok] / o_nf[ok] - r_no[ok] / r_nf[ok]
    z = d.mean() / (d.std(ddof=1) / math.sqrt(ok.sum()))
    rows.append(("2 match", "faces with no positive anchor (fraction)", f"{r_no.sum() / r_nf.sum():.4f}",
                 f"{o_no.sum() / o_nf.sum():.4f}", f"z={z:+.1f}", "DIFF" if abs(z) > 3 else "ok"))
    rows.append(("2 match", "positives/face (all faces pooled)", f"{ref['n_pos'].sum() / r_nf.sum():.3f}",
                 f"{ours['n_pos'].sum() / o_nf.sum():.3f}", "", ""))
    return rows


def print_table(rows, header=("stage", "quantity", "reference", "ours", "test", "")):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*[str(x) for x in r]))


def main(argv=None):
    a = parse_args(argv)
    if a.ref_side:
        return ref_side(a)

    t_start = time.time()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="compare_pipelines_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    images_dir = a.images or str(Path(a.label_file).resolve().parent / "images")

    from retinaface_tf.data.widerface import read_annotations

    annotations = read_annotations(a.label_file)
    rng = np.random.default_rng(a.seed)
    pick = np.sort(rng.choice(len(annotations.images), size=min(a.num_images, len(annotations.images)), replace=False))
    images = [annotations.images[i] for i in pick]
    (work / "images.json").write_text(json.dumps([im.path for im in images]))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(a.shim).resolve()), str(Path(a.peer).resolve())]),
               OMP_NUM_THREADS=str(a.threads))
    cmd = [a.ref_python, str(Path(__file__).resolve()), "--ref-side", "--workdir", str(work),
           *sum(([f"--{k.replace('_', '-')}", str(getattr(a, k))] for k in (
               "label_file", "peer", "backbone", "draws", "image_size", "batch", "epochs", "decay1", "decay2", "seed",
               "threads", "init_draws")), [])]
    ref_log = open(work / "ref_side.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=ref_log, stderr=subprocess.STDOUT)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    from retinaface_tf.config import Config
    from retinaface_tf.ops.anchors import generate_anchors_np

    cfg = Config.load(a.config)
    if cfg.data.image_size != a.image_size:
        cfg = cfg.override({"data.image_size": a.image_size})
    anchors = generate_anchors_np(a.image_size, a.image_size, cfg.anchors.min_sizes, cfg.anchors.steps)

    t0 = time.time()
    ours = our_augment(a, cfg, images, images_dir, anchors)
    t_ours_aug = time.time() - t0
    print(f"[ours] stage 1-2: {len(ours['img'])} samples in {t_ours_aug:.0f} s", file=sys.stderr)

    if proc.wait() != 0:
        ref_log.close()
        sys.exit(f"reference side failed; see {work / 'ref_side.log'}:\n" + (work / "ref_side.log").read_text()[-3000:])
    ref_log.close()
    ref = dict(np.load(work / "ref.npz"))
    ref_json = json.loads((work / "ref.json").read_text())
    print(f"[reference] {ref_json['seconds']}", file=sys.stderr)

    n_img = len(images)
    rows = build_rows(a, ref, ours, n_img, a.image_size)
    rows.insert(0, ("0 setup", "anchors: max |ours - PriorBox|", "", f"{np.abs(anchors - ref['priors']).max():.1e}",
                    f"{len(anchors)} vs {len(ref['priors'])}", "ok" if anchors.shape == ref["priors"].shape and np.abs(
                        anchors - ref["priors"]).max() < 1e-6 else "DIFF"))
    rows.insert(1, ("0 setup", "samples (images x draws)", f"{len(ref['img'])}", f"{len(ours['img'])}",
                    f"instrumentation consistent {ours['consistent'].mean():.4f}", ""))

    t0 = time.time()
    pos_ours_on_ref, no_ours_on_ref = our_match_ref_faces(ref, anchors, cfg)
    same = pos_ours_on_ref == ref["n_pos"]
    rows.append(("2 match", "paired: our matcher on the reference's faces, n_pos equal", "", f"{same.mean():.4f}",
                 f"max |diff| {np.abs(pos_ours_on_ref - ref['n_pos']).max()}",
                 "ok" if same.mean() > 0.999 else "DIFF"))
    rows.append(("2 match", "paired: faces with no positive anchor equal", "",
                 f"{(no_ours_on_ref == ref['n_noanchor']).mean():.4f}", "", ""))

    res = our_loss(a, cfg, ref, ref_json, work, anchors)
    sec = "3 loss (same weights, ref batch)"
    rows.append((sec, "positives in the batch", f"{ref_json['batch_positives']}", f"{res['batch_positives']}", "",
                 "ok" if ref_json["batch_positives"] == res["batch_positives"] else "DIFF"))

    def rel(x, y):
        return abs(x - y) / max(abs(x), 1e-12)

    for k in ("total", "loc", "conf", "landm"):
        r, o = ref_json["loss"][k], res["loss"][k]
        rows.append((sec, f"loss {k}", f"{r:.5f}", f"{o:.5f}", f"rel {rel(r, o):.1e}",
                     "ok" if rel(r, o) < 1e-3 or abs(r - o) < 1e-6 else "DIFF"))
    for g in GROUPS:
        r, o = ref_json["grad_norm"][g], res["grad_norm"][g]
        rows.append((sec, f"grad norm {g}", f"{r:.5f}", f"{o:.5f}", f"rel {rel(r, o):.1e}",
                     "ok" if rel(r, o) < 1e-2 else "DIFF"))
    for g in GROUPS:
        c = res["grad_cosine"][g]
        rows.append((sec, f"grad cosine(ours, ref) {g}", "", f"{c:.6f}", "", "ok" if c > 0.999 else "DIFF"))
    m = res["mining"]
    rows.append((sec, "anchors in the class term (positives + hard negatives)", f"{m['selected_ref']}",
                 f"{m['selected_ours']}",
                 f"{m['ref_only']} ref-only / {m['ours_only']} ours-only, {m['images_with_swaps']} images", ""))
    rows.append((sec, "background-CE spread of the differently mined anchors", "", f"{m['swapped_ce_spread']:.1e}",
                 "small = near-ties broken differently", "ok" if m["swapped_ce_spread"] < 1e-3 else "DIFF"))
    gt = res["grad_tensor_rel_l2"]
    for key, label, limit in (
            ("ours64_vs_ref64", "ours f64 vs ref f64, same negatives (identity)", 1e-3),
            ("ref32_vs_ref64", "ref f32 vs ref f64 (reference rounding)", None),
            ("ours32_vs_ref64", "ours f32 vs ref f64, same negatives (our rounding)", None),
            ("ours32_vs_ref32", "ours f32 vs ref f32, own mining (as trained)", None),
            ("ref_batch2_vs_batch1", "ref: another batch vs this batch (SGD noise)", None)):
        v = np.asarray(gt[key])
        verdict = "" if limit is None else ("ok" if v.max() < limit and not gt["missing"] else "DIFF")
        rows.append((sec, f"grad |dg|/|g| per tensor ({len(v)}): {label}", f"median {np.median(v):.1e}",
                     f"max {v.max():.1e}", f"worst {gt['names'][int(v.argmax())]}", verdict))
    r, o = ref_json["loss_float64"]["total"], ref_json["loss"]["total"]
    rows.append((sec, "reference loss total f64 / f32", f"{r:.5f}", f"{o:.5f}", f"rel {rel(r, o):.1e}", ""))
    for k, (med, mx) in res["after_step_rel_diff"].items():
        lim = 1e-3 if k != "weight update" else None
        rows.append((sec, f"after 1 SGD step: rel diff of {k} per tensor", "", f"median {med:.1e}", f"max {mx:.1e}",
                     "" if lim is None else ("ok" if mx <= lim else "DIFF")))
    for k in ("total", "loc", "conf"):
        r, o = ref_json["loss_after_step"][k], res["loss_after_step"][k]
        rows.append((sec, f"loss {k} after 1 SGD step", f"{r:.5f}", f"{o:.5f}", f"rel {rel(r, o):.1e}",
                     "ok" if rel(r, o) < 1e-2 else "DIFF"))
    sec2 = "3 loss (own init)"
    def mean_sd(vals):
        v = np.asarray(vals, np.float64)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0), len(v)

    for k in ("total", "conf", "loc") if res["init_losses"]["as_trained"] else ():
        rm, rs, rn = mean_sd([d[k] for d in ref_json["init_losses"]])
        om, os_, on = mean_sd([d[k] for d in res["init_losses"]["as_trained"]])
        im, is_, _ = mean_sd([d[k] for d in res["init_losses"]["independent"]])
        t = (om - rm) / math.sqrt(rs ** 2 / rn + os_ ** 2 / on) if rn > 1 and on > 1 else float("nan")
        rows.append((sec2, f"initial loss {k}, mean +- sd over {rn} inits", f"{rm:.3f} +- {rs:.3f}",
                     f"{om:.3f} +- {os_:.3f}", f"t={t:+.1f}; ours, independent streams: {im:.3f} +- {is_:.3f}",
                     "DIFF" if abs(t) > 3 else "ok"))
    sh = res["shared_init_streams"]
    rows.append((sec2, "from-scratch kernels drawn from another layer's stream", f"{sh['reference']}/{sh['n']}",
                 f"{sh['ours']}/{sh['n']}", "leading values proportional (corr > 0.999)",
                 "ok" if sh["ours"] <= sh["reference"] else "DIFF"))
    for g in ("fpn", "ssh", "heads"):
        rows.append((sec2, f"init kernel std {g}", f"{res['init_kernel_std']['reference'][g]:.4f}",
                     f"{res['init_kernel_std']['ours'][g]:.4f}", "", ""))

    lr_ours, steps = our_lr(a, cfg, ref_json["n_images"])
    lr_ref = ref["lr"]
    n_eq = int(np.sum(np.isclose(lr_ours, lr_ref, rtol=1e-6, atol=0))) if len(lr_ours) == len(lr_ref) else 0
    changes = lambda lr: [int(i) for i in np.nonzero(np.diff(lr))[0] + 1]  # noqa: E731
    rows.append(("4 lr", "steps per epoch / total steps", f"{ref_json['epoch_size']} / {len(lr_ref)}",
                 f"{steps} / {len(lr_ours)}", "", "ok" if len(lr_ours) == len(lr_ref) else "DIFF"))
    rows.append(("4 lr", "steps where the rate changes", str(changes(lr_ref)), str(changes(lr_ours)), "", ""))
    rows.append(("4 lr", "values equal (rtol 1e-6)", "", f"{n_eq}/{len(lr_ref)}", "",
                 "ok" if n_eq == len(lr_ref) else "DIFF"))
    rows.append(("4 lr", "distinct rates", " ".join(f"{v:.1e}" for v in sorted(set(lr_ref.tolist()), reverse=True)),
                 " ".join(f"{v:.1e}" for v in sorted(set(np.round(lr_ours, 12).tolist()), reverse=True)), "", ""))
    n_all = ref_json["n_images"]
    ro, oo = order_stats(ref["order"], n_all), order_stats(our_order(cfg, n_all, a.seed), n_all)
    se = math.hypot(ro["corr_sd"] / math.sqrt(ro["passes"]), oo["corr_sd"] / math.sqrt(oo["passes"]))
    rows.append(("4 data order", "corr(label-file index, position in pass)",
                 f"{ro['corr']:+.3f} (sd {ro['corr_sd']:.3f})", f"{oo['corr']:+.3f} (sd {oo['corr_sd']:.3f})",
                 f"shuffle buffer {cfg.data.shuffle_buffer} of {n_all}, {ro['passes']} passes",
                 "DIFF" if abs(oo["corr"] - ro["corr"]) > 3 * se else "ok"))
    rows.append(("4 data order", "mean position of the label file's last 20 %", f"{ro['tail']:.3f}",
                 f"{oo['tail']:.3f}", "0.5 = uniform", ""))
    imgs_per_epoch_ref = ref_json["n_images"]
    rows.append(("4 data order", "images per epoch (last batch)", f"{imgs_per_epoch_ref} (last batch "
                 f"{imgs_per_epoch_ref - (ref_json['epoch_size'] - 1) * a.batch})", f"{steps * cfg.train.batch_size} "
                 f"(repeat: every batch {cfg.train.batch_size})", "", "note"))

    print(f"\ncompare_pipelines: {n_img} images x {a.draws} draws at {a.image_size}, label file {a.label_file}; "
          f"{time.time() - t_start:.0f} s\n")
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "reference": ref_json, "ours": res}, indent=1, default=str))
    if not a.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
