"""``retinaface-tf convert``: reference ``.pth`` → Keras weights + resolved config."""

from __future__ import annotations

from retinaface_tf.config import Config
from retinaface_tf.fileio import output_lock
from retinaface_tf.models.weights import convert_checkpoint


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=(
        "Convert PyTorch RetinaFace checkpoints without PyTorch. The checkpoint says what it is: "
        "a full model of biubug6/Pytorch_Retinaface (mobilenet0.25_Final.pth, Resnet50_Final.pth) or of "
        "yakhyo/retinaface-pytorch (retinaface_mv1_0.25/0.50, retinaface_mv1, retinaface_mv2, retinaface_r18/r34.pth) "
        "-> OUTPUT/model.weights.h5; or an ImageNet backbone (mobilenetV1X0.25_pretrain.tar, torchvision "
        "resnet18/34/50-*.pth, mobilenet_v2-*.pth) -> OUTPUT/backbone.weights.h5. "
        "A checkpoint that asks to import anything but tensors and containers is refused."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="PyTorch .pth / .tar checkpoint (RetinaFace or ImageNet backbone)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder, written atomically (required)")
    p.add_argument("--config", default=None, metavar="CONFIG",
                   help="config name or YAML file; must build the checkpoint's network (default: that network's preset)")
    return p


def run(args) -> int:
    with output_lock(args.output):  # a second convert into the same folder is refused at once
        cfg = None if args.config is None else Config.load(args.config)
        summary = convert_checkpoint(args.checkpoint, args.output, config=cfg)
    source = f"{summary['family']} " if summary["family"] else "ImageNet "
    print(f"converted {source}{summary['backbone']} {summary['kind']} checkpoint (config {summary['config']}): "
          f"{summary['tensors']} tensors mapped, "
          f"{summary['skipped']} skipped (num_batches_tracked / classifier) -> {summary['weights']}")
    return 0
