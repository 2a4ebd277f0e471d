#!/usr/bin/env bash
# Installs what building and running vidfarm needs on Debian/Ubuntu: FFmpeg's libraries and
# x264 (MP4 encoding), clang (FFmpeg bindings), protoc (the gRPC contract), ffprobe (checks)
# Redis (the distributed farm's queue), and umoci and runc (the container image: built by
# deploy/image/build.sh, run by its check). Skips apt entirely when everything is present.
set -euo pipefail

packages=(
  pkg-config clang libclang-dev protobuf-compiler
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev ffmpeg
  redis-server redis-tools python3-venv umoci runc
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }
