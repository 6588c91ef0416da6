"""``python -m retinaface_tf`` = the ``retinaface-tf`` command."""

import sys

from retinaface_tf.cli import main

sys.exit(main())
