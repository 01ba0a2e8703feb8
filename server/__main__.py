"""`python -m server` runs the `greenroom` command."""

import sys

from server.cli import main

sys.exit(main())
