#!/usr/bin/env python3
"""`python scripts/bench.py ...`: starts the benchmarks' command line, scripts/bench/cli.py.

Run as a script, this folder is on sys.path, so `bench` below is the package
scripts/bench/ (a package wins over a module of the same name).
"""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
