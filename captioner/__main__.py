"""`python -m captioner ...` is the `captioner` command (for environments where the package is on
PYTHONPATH but not installed, so the console script does not exist)."""

import sys

from captioner.cli import main

sys.exit(main())
