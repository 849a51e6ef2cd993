#!/usr/bin/env bash
# Exports the photographs the ZPressor toy uses as textures (eight scikit-image images) into
# DEST (default: $HOME/.cache/frugal/zpressor-textures). The toy checks each file's sha256.
set -euo pipefail
exec "$(dirname "$0")/../assets/skimage-images.sh" "${1:-$HOME/.cache/frugal/zpressor-textures}" \
  astronaut.png coffee.png chelsea.png rocket.jpg brick.png grass.png gravel.png motorcycle_left.png
