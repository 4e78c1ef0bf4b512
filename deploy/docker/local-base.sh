#!/usr/bin/env bash
# Stand-in for python:3.11-slim-bookworm, for machines that reach Debian's packages and PyPI but no image
# registry (this project's offline CI). NOT something users need: with a registry, the Dockerfile's
# default bases are pulled as usual.
#
#   deploy/docker/local-base.sh [TAG]        prints the tag (default danet-local/python:3.11-bookworm)
#   docker build --build-arg PYTHON_IMAGE="$(deploy/docker/local-base.sh)" .
#
# debootstrap --variant=minbase bookworm (whose python3 is 3.11) + python3-venv, passwd (useradd) and CA
# certificates; a venv in /opt/python with pip is first on PATH, so `python`, `python3` and `pip` behave
# as in the official image (root installs land in the venv, not in Debian's externally managed Python).
# Imported with `docker import` and labelled with a hash of this script: a second run with the image
# present returns at once; the root filesystem tarball is also kept under DANET_BASE_CACHE, so a new
# daemon store only re-imports it.
set -euo pipefail

TAG="${1:-danet-local/python:3.11-bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${DANET_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/danet-serve/base}"
RECIPE="$(sha256sum "$0" | cut -c1-16)"
TARBALL="$CACHE/python-3.11-$SUITE-$RECIPE.tar"

log() { echo "local-base: $*" >&2; }

if [ "$(docker image inspect --format '{{ index .Config.Labels "danet.base.recipe" }}' "$TAG" 2>/dev/null)" = "$RECIPE" ]; then
  log "$TAG is up to date (recipe $RECIPE)"
  echo "$TAG"
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
  mkdir -p "$CACHE"
  ROOT="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOT"' EXIT
  log "debootstrap $SUITE minbase into $ROOT (a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >&2
  chroot "$ROOT" python3 -m venv /opt/python
  chroot "$ROOT" /opt/python/bin/python -c "import ensurepip, venv, ssl, sqlite3"
  # What python:3.11-slim leaves out too: package lists, downloaded .debs, documentation, bytecode caches.
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
    "$ROOT"/var/log/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/usr/share/locale/*
  find "$ROOT/usr/lib/python3.11" "$ROOT/opt/python" -name __pycache__ -prune -exec rm -rf {} +
  chmod 755 "$ROOT"  # mktemp made it 0700, and tar records it as the image's /
  rm -f "$CACHE"/python-3.11-*.tar  # older recipes
  tar --numeric-owner -C "$ROOT" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

log "importing $TARBALL as $TAG"
docker import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL danet.base.recipe=$RECIPE danet.base.note=stand-in-for-python-3.11-slim-bookworm" \
  --change 'CMD ["python3"]' \
  "$TARBALL" "$TAG" >/dev/null
echo "$TAG"
