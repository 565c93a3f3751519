"""``python -m harken``: the device agent's command line (the same as ``harken``)."""

import sys

from harken.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
