#!/usr/bin/env bash
# Installs what the project needs: with --system, Debian's nginx and ffmpeg
# (when missing); always, the virtualenv in .venv with requirements.txt.
set -euo pipefail

readonly VENV=.venv
readonly APT_PACKAGES=(nginx ffmpeg)

#######################################
# Installs the Debian packages whose commands are missing.
# Uses sudo only when not already root.
#######################################
install_system_packages() {
  local missing=()
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    command -v "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=()
  [[ ${EUID} -ne 0 ]] && sudo=(sudo)
  echo "setup: installing ${missing[*]} with apt-get" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
}

#######################################
# Creates .venv if needed and installs requirements.txt into it.
#######################################
install_python_packages() {
  [[ -x "${VENV}/bin/python" ]] || python3 -m venv "${VENV}"
  "${VENV}/bin/pip" install -q --upgrade pip
  "${VENV}/bin/pip" install -q -r requirements.txt
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  if [[ "${1:-}" == "--system" ]]; then
    install_system_packages
  fi
  install_python_packages
}

main "$@"
