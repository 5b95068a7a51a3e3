#!/usr/bin/env bash
# Installs what the project needs: with --system, Debian's nginx and ffmpeg
# (when missing); with --test as well, chromium and its driver for the page's
# browser test (tests/test_page.py); always, the virtualenv in .venv with
# requirements.txt.
set -euo pipefail

readonly VENV=.venv
# command:package, checked by command, so a hand-built nginx on PATH counts.
readonly SERVE_PACKAGES=(nginx:nginx ffmpeg:ffmpeg)
readonly TEST_PACKAGES=(chromium:chromium chromedriver:chromium-driver)

#######################################
# Installs the Debian packages whose commands are missing.
# Uses sudo only when not already root.
# Arguments:
#   command:package pairs
#######################################
install_system_packages() {
  local missing=()
  local entry
  for entry in "$@"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 \
      || [[ -x "/usr/sbin/${entry%%:*}" ]] || missing+=("${entry#*:}")
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
  local packages=()
  local arg
  for arg in "$@"; do
    case "${arg}" in
      --system) packages+=("${SERVE_PACKAGES[@]}") ;;
      --test) packages+=("${SERVE_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
      *) echo "usage: $0 [--system] [--test]" >&2; exit 2 ;;
    esac
  done
  if [[ ${#packages[@]} -gt 0 ]]; then
    install_system_packages "${packages[@]}"
  fi
  install_python_packages
}

main "$@"
