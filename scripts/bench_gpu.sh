#!/usr/bin/env bash
# The GPU subset of the benchmarks (`make bench-gpu`), ending within 8
# minutes so it fits a lent GPU machine's budget. The lab puts every fleet
# instance and direct worker on a GPU and samples the GPUs during the load
# (scripts/bench/gpu.py); the document is docs/benchmarks.md as for
# `make bench`. Each benchmark is its own bench.py run, because bench.py
# writes the document when a run ends and keeps the other benchmarks'
# figures: a run cut short by the deadline loses only itself.
# Extra arguments go to every run, e.g. `--out /tmp/b/benchmarks.md`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly BUDGET_S=420  # for the runs; the grace below keeps the whole under 8 min
readonly GRACE_S=45    # after SIGTERM, bench.py stops its fleets and workers (a worker waits up to 45 s)
readonly MIN_LEFT_S=60 # a run starting later cannot even load its model
# Most telling first: batching on the SenseVoiceSmall-shaped FunASR model,
# each engine's real-time factor (Whisper base included), then scaling.
readonly STEPS=(
  "batching --engine funasr-full --rounds 3"
  "rtf"
  "scaling --engine funasr-full --quick"
)

err() {
  echo "bench-gpu: $*" >&2
}

main() {
  cd "${REPO}"
  # GPUs counted as the fleet counts them (scripts/fleet/placement.py gpu_count).
  local gpus
  gpus="$(nvidia-smi -L 2>/dev/null || true)"
  if ! grep -q '^GPU ' <<< "${gpus}"; then
    err "no GPU visible to nvidia-smi: nothing to measure here (make bench runs the CPU benchmarks)"
    return 1
  fi
  local deadline=$((SECONDS + BUDGET_S)) status=0 step left
  for step in "${STEPS[@]}"; do
    left=$((deadline - SECONDS))
    if ((left < MIN_LEFT_S)); then
      err "out of time, not run: ${step}"
      status=1
      continue
    fi
    # On SIGTERM bench.py's Lab stops what it started (its own sessions).
    # $step is deliberately split into the benchmark and its options.
    # shellcheck disable=SC2086
    if ! timeout --kill-after="${GRACE_S}" "${left}" \
      .venv/bin/python scripts/bench.py --only ${step} "$@"; then
      err "failed or cut short at the deadline: ${step}"
      status=1
    fi
  done
  return "${status}"
}

main "$@"
