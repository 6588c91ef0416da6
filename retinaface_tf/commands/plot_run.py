"""``retinaface-tf plot-run``: loss curves and learning rate of a training run as one PNG."""

from __future__ import annotations


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + " (from RUN/history.csv, written by "
                       "`retinaface-tf train`'s CSVLogger).")
    p.add_argument("run", metavar="RUN", help="training run folder (runs/NAME) or its history.csv")
    p.add_argument("--output", "-o", default=None, metavar="PNG", help="where to save (default RUN/training.png)")
    return p


def run(args) -> int:
    from retinaface_tf.plots import plot_run

    path = plot_run(args.run, args.output)
    print(f"wrote {path}")
    return 0
