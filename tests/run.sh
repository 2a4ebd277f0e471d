#!/usr/bin/env bash
# Runs every vidfarm test: installs the system packages, starts Redis when it is not
# running, installs the s3s-fs S3 server if absent, runs the Rust workspace's tests (unit,
# model parity, end-to-end over TCP, S3 storage), checks that the CUDA backend builds,
# checks the Helm chart, and runs the Python gRPC client test against the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The S3-compatible server of the storage tests, built once into a cache kept between runs.
# Setting VIDFARM_S3S_FS makes those tests run (they skip only when it is unset).
s3s_root="${VIDFARM_S3S_FS_ROOT:-/var/cache/vidfarm/s3s-fs}"
if [ ! -x "$s3s_root/bin/s3s-fs" ]; then
  cargo install --locked --root "$s3s_root" s3s-fs@0.14.1 --features binary
fi
export VIDFARM_S3S_FS="$s3s_root/bin/s3s-fs"

target="${CARGO_TARGET_DIR:-target}"
cargo build --locked -p vidfarm
cargo test --locked --workspace
cargo check --locked -p vidfarm --features cuda
# The training binary carried to GPU machines (crates/synth/TRAINING.md, "On a GPU").
cargo check --locked -p vidfarm-train --features cli,cuda

# The Helm chart, linted and rendered by Helm's own library, manifests checked against the
# Kubernetes schemas (no helm binary, no cluster).
helm_venv="${VIDFARM_HELM_VENV:-$target/helm-venv}"
[ -x "$helm_venv/bin/python" ] || { python3 -m venv "$helm_venv" && "$helm_venv/bin/pip" install -q -r tests/helm/requirements.txt; }
"$helm_venv/bin/python" tests/helm/check_chart.py

# The container image the chart runs, built from the debug binary and run with runc.
bash tests/image/check.sh "$target/debug/vidfarm"

venv="${VIDFARM_TEST_VENV:-$target/py-test-venv}"
[ -x "$venv/bin/pytest" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q -r tests/python/requirements.txt; }
VIDFARM_BIN="$target/debug/vidfarm" "$venv/bin/pytest" -q tests/python
