#!/usr/bin/env bash
# Exports the photographs the segmentation scenes are made of (ten scikit-image images) into
# DEST (default: $HOME/.cache/frugal/seg-photos). The scene generator checks each file's sha256.
set -euo pipefail
exec "$(dirname "$0")/../assets/skimage-images.sh" "${1:-$HOME/.cache/frugal/seg-photos}" \
  brick.png grass.png gravel.png chelsea.png astronaut.png rocket.jpg motorcycle_left.png \
  camera.png hubble_deep_field.jpg coffee.png
