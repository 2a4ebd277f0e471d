#!/usr/bin/env bash
# Builds vidfarm's container image with no daemon, no registry and no base image: an OCI image
# archive holding the `vidfarm` binary, the shared libraries it links (FFmpeg, x264, glibc: found
# with ldd), the model folders, the system's CA roots and a non-root user (10001, the chart's).
# Push it with `skopeo copy oci-archive:FILE docker://REGISTRY/vidfarm:TAG`, or `podman load -i FILE`.
#
#   deploy/image/build.sh [--binary PATH] [--model DIR]... [--lib FILE]... [--tag TAG] [--out FILE]
#
#   --binary  the binary to ship (default target/release/vidfarm). GPU workers need one built
#             with `cargo build --release -p vidfarm --features cuda`.
#   --model   a model folder, shipped as /opt/vidfarm/models/NAME (repeatable; default
#             models/vidfarm-tiny, the chart's model.path).
#   --lib     a shared library the binary loads at run time instead of linking it (repeatable).
#             A CUDA build needs NVRTC from a CUDA 12 toolkit: libnvrtc.so.12 and
#             libnvrtc-builtins.so.12.*. The driver (libcuda) is the node's, mounted into the
#             container by the NVIDIA container toolkit.
#   --tag     the image's tag (default the workspace version)
#   --out     where the archive goes (default target/image/vidfarm-TAG.oci.tar)
#
# Needs umoci (deploy/install-deps.sh installs it); tests/image/check.sh builds one and runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."

binary=target/release/vidfarm
models=()
libs=()
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --model) models+=("$2"); shift 2 ;;
    --lib) libs+=("$2"); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
[ ${#models[@]} -gt 0 ] || models=(models/vidfarm-tiny)
out=${out:-target/image/vidfarm-$tag.oci.tar}
[ -x "$binary" ] || { echo "build.sh: --binary $binary: not an executable (build it first)" >&2; exit 1; }
for model in "${models[@]}"; do
  [ -f "$model/model_index.json" ] || { echo "build.sh: --model $model: no model_index.json there" >&2; exit 1; }
done
for lib in "${libs[@]}"; do
  [ -f "$lib" ] || { echo "build.sh: --lib $lib: no such file" >&2; exit 1; }
done
command -v umoci >/dev/null || { echo "build.sh: needs umoci (apt-get install umoci)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
libdir=/usr/local/lib/vidfarm
mkdir -p "$root/usr/local/bin" "$root$libdir" "$root/opt/vidfarm/models" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"

# The binary without its debug sections (a debug build is hundreds of MB with them).
objcopy --strip-debug "$binary" "$root/usr/local/bin/vidfarm"
# Every library it links, whole closure, in one folder on LD_LIBRARY_PATH; the dynamic loader
# at the path written in the binary.
if ldd "$binary" | grep -q 'not found'; then
  echo "build.sh: $binary links libraries this machine lacks:" >&2; ldd "$binary" | grep 'not found' >&2; exit 1
fi
interpreter=$(readelf --program-headers "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
ldd "$binary" | awk '/=> \// { print $3 }' | while read -r lib; do cp -L "$lib" "$root$libdir/"; done
mkdir -p "$root$(dirname "$interpreter")"
cp -L "$interpreter" "$root$interpreter"
for lib in "${libs[@]}"; do cp -L "$lib" "$root$libdir/"; done
for model in "${models[@]}"; do cp -r "$model" "$root/opt/vidfarm/models/$(basename "$model")"; done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nvidfarm:x:10001:10001:vidfarm:/opt/vidfarm:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nvidfarm:x:10001:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)
umoci insert "${rootless[@]}" --image "$layout:$tag" "$root" /
# Run bare, the image serves the embedded farm on port 7700 (`docker run -p 7700:7700`); the
# chart's pods run `coordinator` and `worker` instead, configured by its ConfigMap.
umoci config --image "$layout:$tag" \
  --config.entrypoint /usr/local/bin/vidfarm \
  --config.cmd=serve --config.cmd=--listen --config.cmd=0.0.0.0:7700 --config.cmd=--store --config.cmd=/tmp/vidfarm-data \
  --config.user 10001:10001 --config.workingdir /opt/vidfarm \
  --config.env PATH=/usr/local/bin \
  --config.env LD_LIBRARY_PATH=$libdir \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.env NVIDIA_DRIVER_CAPABILITIES=compute,utility \
  --config.exposedports 7700/tcp --config.exposedports 9464/tcp \
  --config.label org.opencontainers.image.title=vidfarm \
  --config.label org.opencontainers.image.version="$tag" \
  --config.label org.opencontainers.image.description="vidfarm: a distributed text-to-video render farm"
umoci gc --layout "$layout"

mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out" .
echo "image $tag: $out ($(du -h "$out" | cut -f1))"
