#!/usr/bin/env bash
# Make a Debian bookworm base image without any registry: debootstrap a minimal root filesystem from
# the machine's Debian mirror and import it (about 30 s). CI builds the CPU images on it.
#   images/base-image.sh [IMAGE]   (default local/debian:bookworm)
set -euo pipefail
image=${1:-local/debian:bookworm}
DOCKER=${DOCKER:-docker}
if "$DOCKER" image inspect "$image" >/dev/null 2>&1; then echo "$image exists"; exit 0; fi
# the machine's own Debian mirror: the first deb / URIs line that is not a comment
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
  | grep -vE '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?' | head -1 || true)
mirror=${MIRROR:-${mirror:-http://deb.debian.org/debian}}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | "$DOCKER" import - "$image"
echo "made $image from $mirror"
