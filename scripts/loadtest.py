#!/usr/bin/env python3
"""`python scripts/loadtest.py ...`: starts the load test's command line, scripts/loadtest/cli.py.

Run as a script, this folder is on sys.path, so `loadtest` below is the
package scripts/loadtest/ (a package wins over a module of the same name).
"""

import sys

from loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
