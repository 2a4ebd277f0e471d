#!/usr/bin/env bash
# Builds the container image (deploy/image/build.sh) from a vidfarm binary and runs it with runc
# the way the Helm chart runs it: as user 10001, root filesystem read-only, /tmp an empty
# writable volume. The container runs the image's own command (`serve`, the embedded farm);
# inside it, a client submits a job to that server, follows it and fetches the clip, and
# `render` makes one with the model at the chart's model.path. Outside, ffprobe checks both MP4s.
#
#   tests/image/check.sh BINARY
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:?usage: tests/image/check.sh BINARY}

work=$(mktemp -d)
container=vidfarm-image-check-$$
cleanup() {
  runc delete --force "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bash deploy/image/build.sh --binary "$binary" --tag check --out "$work/vidfarm.oci.tar"
mkdir -p "$work/layout" "$work/out"
tar -C "$work/layout" -xf "$work/vidfarm.oci.tar"
umoci unpack --image "$work/layout:check" "$work/bundle" >/dev/null
chmod 777 "$work/out"

# The chart's model.path: the model the pods load must be where the image put it.
model=$(awk '/^model:/ { in_model = 1; next } /^[^ #]/ { in_model = 0 } in_model && $1 == "path:" { print $2; exit }' helm/vidfarm/values.yaml)
[ -n "$model" ] || { echo "check.sh: no model.path in helm/vidfarm/values.yaml" >&2; exit 1; }

python3 - "$work/bundle/config.json" "$work/out" <<'PYTHON'
import json, sys
path, out = sys.argv[1:]
config = json.load(open(path))
process = config["process"]
# What the image says about itself, as the chart and `docker run` rely on it.
assert process["user"]["uid"] == 10001 and process["user"]["gid"] == 10001, process["user"]
assert process["args"] == ["/usr/local/bin/vidfarm", "serve", "--listen", "0.0.0.0:7700", "--store", "/tmp/vidfarm-data"], process["args"]
assert any(e.startswith("LD_LIBRARY_PATH=") for e in process["env"]), process["env"]
process["terminal"] = False
config["root"]["readonly"] = True
config["mounts"] += [
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
    {"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]},
]
json.dump(config, open(path, "w"))
PYTHON

# The image's command, detached; the clients run inside the container, in its network namespace.
runc run --detach --bundle "$work/bundle" "$container" </dev/null >"$work/serve.log" 2>&1
inside() { timeout 300 runc exec "$container" /usr/local/bin/vidfarm "$@"; }
for attempt in $(seq 100); do
  inside list --addr http://127.0.0.1:7700 >/dev/null 2>&1 && break
  [ "$attempt" -lt 100 ] || { echo "check.sh: the image's server did not answer in 20 s:" >&2; cat "$work/serve.log" >&2; exit 1; }
  sleep 0.2
done
job=$(inside submit "a blue square moving up on a black background" --seconds 1 --json --addr http://127.0.0.1:7700 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
inside watch "$job" --addr http://127.0.0.1:7700 >/dev/null
inside fetch "$job" -o /out/served.mp4 --addr http://127.0.0.1:7700
inside render "a red circle moving to the right on a white background" --seconds 1 --model "$model" -o /out/clip.mp4

for clip in served.mp4 clip.mp4; do
  probe=$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height,nb_frames -of csv=p=0 "$work/out/$clip")
  echo "the image made $clip: $probe"
  [ "$probe" = "h264,64,64,9" ] || { echo "check.sh: expected h264,64,64,9 (one second at 8 fps, 64x64): got $probe" >&2; exit 1; }
done
