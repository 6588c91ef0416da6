"""``retinaface-tf convert``: reference ``.pth`` → Keras weights + resolved config."""

from __future__ import annotations

from retinaface_tf.config import Config
from retinaface_tf.models.weights import convert_checkpoint


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=(
        "Convert biubug6/Pytorch_Retinaface checkpoints without PyTorch: the full RetinaFace "
        "mobilenet0.25 model (mobilenet0.25_Final.pth -> OUTPUT/model.weights.h5) or the ImageNet "
        "MobileNetV1-0.25 backbone (mobilenetV1X0.25_pretrain.tar -> OUTPUT/backbone.weights.h5). "
        "A checkpoint that asks to import anything but tensors and containers is refused."))
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="reference .pth / .tar checkpoint")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder, written atomically (required)")
    p.add_argument("--config", default="mobilenet025", metavar="CONFIG",
                   help="config name or YAML file (default mobilenet025)")
    return p


def run(args) -> int:
    cfg = Config.load(args.config)
    summary = convert_checkpoint(args.checkpoint, args.output, config=cfg)
    print(f"converted {summary['kind']} checkpoint: {summary['tensors']} tensors mapped, "
          f"{summary['skipped']} skipped (num_batches_tracked / classifier) -> {summary['weights']}")
    return 0
