"""``python -m harken.training``: harken-train's command line; what torch's launcher
starts in each process of ``harken-train train --nproc N`` (training/distributed.py)."""

import sys

from harken.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
