#!/usr/bin/env bash
# Exports images bundled with scikit-image, taken from its PyPI wheel (pinned by file name and
# sha256) with pip, into DEST. Shared by the ZPressor toy's textures and the segmentation scenes;
# each consumer checks its files' sha256 when it reads them.
#   scripts/assets/skimage-images.sh DEST FILE…
set -euo pipefail
DEST="$1"; shift
WHEEL=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
WHEEL_SHA256=24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_17_x86_64 scikit-image==0.25.2 -d "$TMP"
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum -c -
mkdir -p "$TMP/out"
for f in "$@"; do unzip -q -j -o "$TMP/$WHEEL" "skimage/data/$f" -d "$TMP/out"; done
mkdir -p "$DEST"
cp "$TMP"/out/* "$DEST"/
(cd "$DEST" && sha256sum "$@")
echo "images in $DEST"
