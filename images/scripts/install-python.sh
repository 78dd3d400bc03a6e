#!/bin/sh
# Make sure the base image has Python 3 (and, with --venv, the venv module): python:*-slim images
# already do; CUDA runtime bases (Ubuntu) and a bare Debian base made with debootstrap do not.
set -eu
need="python3"
[ "${1:-}" = "--venv" ] && need="python3 python3-venv"
if command -v python3 >/dev/null 2>&1 && { [ "${1:-}" != "--venv" ] || python3 -c "import ensurepip" 2>/dev/null; }; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $need ca-certificates
rm -rf /var/lib/apt/lists/*
