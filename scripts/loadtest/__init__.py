"""The load test: N users send real recordings to a worker or the fleet
(config, client, core, monitor) and the run's figures and report (stats,
report). `scripts/loadtest.py` is its command line (cli); the benchmarks
import `core.run_load` and `stats.summarize`.
"""
