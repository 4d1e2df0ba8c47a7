"""``python -m mlcl``: the command line (also what torchrun launches for ``--nproc``)."""

import sys

from mlcl.cli import main

sys.exit(main())
