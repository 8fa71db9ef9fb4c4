"""``python -m membound``: the same command as ``membound``."""

import sys

from membound.cli import main

sys.exit(main())
