#!/usr/bin/env bash
# Build an offline Debian base image for the worker image (no registry needed).
#
#   scripts/build_offline_base.sh [TAG]        # default TAG: mahabharatha-base:trixie
#
# Does nothing when TAG already exists locally. Otherwise bootstraps a minimal Debian trixie with python3,
# git and ca-certificates using debootstrap (installed through apt when missing; needs root and access to
# a Debian mirror, MIRROR overrides http://deb.debian.org/debian) and imports it with `docker import`.
# Then build the worker image on top of it:
#
#   docker build -t mahabharatha-worker:test -f .devcontainer/Dockerfile \
#       --build-arg BASE_IMAGE=mahabharatha-base:trixie --build-arg INSTALL_CLAUDE=0 .
set -euo pipefail

TAG="${1:-mahabharatha-base:trixie}"
SUITE="${SUITE:-trixie}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "build_offline_base: $TAG already exists; nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    echo "build_offline_base: installing debootstrap"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/mahabharatha-rootfs.XXXXXX")"
cleanup() { $SUDO rm -rf "$ROOTFS"; }
trap cleanup EXIT

echo "build_offline_base: debootstrap $SUITE into $ROOTFS (a few minutes)"
$SUDO "$DEBOOTSTRAP" --variant=minbase --include=python3,git,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null

# Keep the image small: package lists and caches are not needed at run time.
$SUDO rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb

echo "build_offline_base: importing as $TAG"
$SUDO tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >/dev/null
echo "build_offline_base: built $TAG"
