#!/bin/sh
# Install the bakeoff package into /opt/bakeoff, in two steps so Docker caches the heavy one:
#   install-bakeoff.sh deps STAGE   dependencies only (pyproject.toml present, no source yet)
#   install-bakeoff.sh package      the package itself, --no-deps (after the source is copied)
# Wheels in /wheels (images/wheels/ in the build context; empty by default) are preferred, e.g. a CPU
# torch wheel for CI builds. A CA bundle given as the BuildKit secret "cabundle" is used for HTTPS
# (an intercepting proxy) without landing in any layer. PIP_INDEX (build arg) replaces the index.
set -eu
[ -f /run/secrets/ca.pem ] && export PIP_CERT=/run/secrets/ca.pem
[ -n "${PIP_INDEX:-}" ] && export PIP_INDEX_URL="$PIP_INDEX"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS=/wheels
[ -x /opt/bakeoff/bin/python ] || python3 -m venv /opt/bakeoff
pip=/opt/bakeoff/bin/pip
case "$1" in
  deps)
    pins=""
    [ -n "${TORCH_VERSION:-}" ] && pins="--pin torch==${TORCH_VERSION}"
    # shellcheck disable=SC2086
    /opt/bakeoff/bin/python /tmp/requirements.py pyproject.toml "$2" $pins > /tmp/requirements.txt
    cat /tmp/requirements.txt
    "$pip" install -r /tmp/requirements.txt
    ;;
  package)
    "$pip" install --no-deps .
    "$pip" check
    ;;
  *) echo "usage: $0 deps STAGE | package" >&2; exit 2 ;;
esac
