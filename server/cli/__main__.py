"""`python -m server.cli` runs the `greenroom` command (what the runner's tests and benchmarks start)."""

import multiprocessing
import sys

from server.cli import main

multiprocessing.freeze_support()
sys.exit(main())
