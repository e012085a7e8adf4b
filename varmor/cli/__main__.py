"""`python -m varmor.cli`: the same entry point as the `varmor` command."""

import sys

from varmor.cli import main

sys.exit(main())
