"""The fleet's control plane: fleet.toml resolved (config) and rendered into
Nginx and Supervisor configs (render), the run state and its journal (state),
supervisord and the workers' /health (supervisor), the upstream (nginx),
scaling and rolling restarts (actions), the health poller (poller, liveness,
status) with the autoscaler (autoscale, capacity), bring-up (serve), the
deployment checklist (verify), and the `scripts/fleet.py` command line (cli).
"""
