#!/usr/bin/env bash
# The fleet monitor: a table of every instance (port, device, supervisor
# state, health, queue, requests, errors, p95 latency, real-time factor),
# GPUs from nvidia-smi when present, host load and memory, fleet totals.
#   scripts/monitor.sh            one table
#   scripts/monitor.sh --watch    redraw every monitor.interval_s
#   scripts/monitor.sh --json     also append the snapshot to the log folder
#   scripts/monitor.sh --check    exit 1 when an alert is raised (for scripts)
# Alerts (instances down, error rate, p95) go to <run>/logs/alerts.log.
# The logic is scripts/monitor.py; this wrapper finds the virtualenv.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

#######################################
# Prints an error to stderr.
# Arguments:
#   The message.
#######################################
err() {
  echo "monitor: $*" >&2
}

main() {
  local python="${FLEET_PYTHON:-${REPO}/.venv/bin/python}"
  if [[ ! -x "${python}" ]]; then
    err "no Python at ${python} (make setup)"
    return 1
  fi
  exec "${python}" "${REPO}/scripts/monitor.py" "$@"
}

main "$@"
