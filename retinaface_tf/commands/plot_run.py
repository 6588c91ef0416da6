"""``retinaface-tf plot-run``: loss curves and learning rate of a training run as one PNG."""

from __future__ import annotations

from retinaface_tf.errors import UsageError
from retinaface_tf.vis.history import plot_run, plot_runs


def add_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + " (from RUN/history.csv, written by "
                       "`retinaface-tf train`'s CSVLogger).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folder (runs/NAME) or its history.csv; "
                   "several runs are drawn on one figure, a colour each (losses, learning rate, val AP)")
    p.add_argument("--output", "-o", default=None, metavar="PNG",
                   help="where to save (default RUN/training.png; required for several runs)")
    p.add_argument("--labels", default=None, metavar="A,B", help="comma-separated legend names for several runs (default: folder names)")
    return p


def run(args) -> int:
    if len(args.runs) == 1:
        path = plot_run(args.runs[0], args.output)
    else:
        if not args.output:
            raise UsageError("--output PNG is required when comparing several runs")
        path = plot_runs(args.runs, args.output, labels=args.labels.split(",") if args.labels else None)
    print(f"wrote {path}")
    return 0
