#!/usr/bin/env bash
# The fleet's health poller, run by supervisord as [program:health-poller].
#
# Every health.interval_s it polls each active instance's /health and tells
# busy from stuck: a late answer from an instance whose processes work is
# busy, never a failure. After health.eject_after stuck or dead checks it
# takes the instance out of the Nginx upstream (re-render + graceful reload;
# one instance out at a time, never the last one serving), after
# health.restart_after it restarts it (one at a time: a stuck one killed, a
# dead one stopped gracefully), and it puts it back once healthy. It also
# runs the autoscaler (within the machine's cores) and writes
# fleet-status.json (served at /fleet).
# The state machine lives in scripts/fleet.py (`poll`); this wrapper checks
# its inputs and hands over with exec, so Supervisor's signals reach it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

#######################################
# Prints an error with a timestamp to stderr.
# Arguments:
#   The message.
#######################################
err() {
  echo "$(date -u +%Y-%m-%dT%H:%M:%S+00:00) health_poller: $*" >&2
}

#######################################
# Prints usage to stdout.
#######################################
usage() {
  echo "usage: $0 [--run-dir DIR] [--once]"
  echo "  DIR defaults to \$FLEET_RUN_DIR or ${REPO}/run; it must hold fleet.json."
}

main() {
  local run_dir="${FLEET_RUN_DIR:-${REPO}/run}"
  local once=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --run-dir) run_dir="${2:?--run-dir needs a value}"; shift 2 ;;
      --once) once=(--once); shift ;;
      -h|--help) usage; return 0 ;;
      *) err "unknown argument: $1"; usage >&2; return 2 ;;
    esac
  done
  local python="${FLEET_PYTHON:-${REPO}/.venv/bin/python}"
  if [[ ! -x "${python}" ]]; then
    err "no Python at ${python} (make setup)"
    return 1
  fi
  if [[ ! -f "${run_dir}/fleet.json" ]]; then
    err "${run_dir}/fleet.json missing: render the fleet first (make serve)"
    return 1
  fi
  exec "${python}" "${REPO}/scripts/fleet.py" --run-dir "${run_dir}" poll "${once[@]}"
}

main "$@"
