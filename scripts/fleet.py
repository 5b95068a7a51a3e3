#!/usr/bin/env python3
"""`python scripts/fleet.py COMMAND`: starts the fleet command line, scripts/fleet/cli.py.

Run as a script, this folder is on sys.path, so `fleet` below is the package
scripts/fleet/ (a package wins over a module of the same name).
"""

import sys

from fleet.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
