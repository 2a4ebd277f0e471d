#!/usr/bin/env bash
# Issue 6's table: each stitch mode on a clip 8x the model's native length (33 s at 8 fps = 265
# frames = 67 latent frames, 16 chunks), measured by `vidfarm model eval` (seam ratio, mean
# absolute frame difference, adherence; JSON in $OUT/eval-MODE.json) and timed as
# `vidfarm render` on the embedded farm with 1 and 2 workers. Run on an otherwise idle machine:
#   bash tests/bench/stitch_modes.sh [MODEL] [PROMPTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-models/vidfarm-tiny}"
prompts="${2:-2}"
out="${OUT:-target/bench/stitch-modes}"
mkdir -p "$out"
rm -f "$out/wall.txt"
cargo build --locked -q -p vidfarm
bin=target/debug/vidfarm
prompt="a green circle moving to the right on a black background"

# name, then the flags that select the mode; concatenation is blend without overlap (the baseline).
modes=("blend:--stitch blend" "sync:--stitch sync" "chain:--stitch chain" "concatenation:--stitch blend --overlap 0")
for entry in "${modes[@]}"; do
  name="${entry%%:*}"; flags="${entry#*:}"
  # shellcheck disable=SC2086
  "$bin" model eval --model "$model" --seconds 33 --limit "$prompts" $flags --out "$out/eval-$name.json" > "$out/eval-$name.txt"
  for workers in 1 2; do
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    VIDFARM_WORKER_COUNT=$workers "$bin" render "$prompt" --model "$model" --seconds 33 $flags --out "$out/$name-$workers.mp4" > /dev/null
    end=$(date +%s%N)
    echo "$name $workers $(( (end - start) / 1000000 ))" >> "$out/wall.txt"
  done
done
python3 - "$out" <<'PY'
import json, sys, collections
out = sys.argv[1]
wall = collections.defaultdict(dict)
for line in open(f"{out}/wall.txt"):
    name, workers, millis = line.split()
    wall[name][workers] = int(millis) / 1000
print("| mode | seam ratio | frame diff | adherence | background | wall, 1 worker | wall, 2 workers |")
print("|---|---|---|---|---|---|---|")
for name in ["blend", "sync", "chain", "concatenation"]:
    s = json.load(open(f"{out}/eval-{name}.json"))["summary"]
    print(f"| {name} | {s['seam_ratio']:.3f} | {s['mean_abs_frame_difference']:.1f} | {s['adherence']:.2f} | "
          f"{s['background_accuracy']:.2f} | {wall[name]['1']:.1f} s | {wall[name]['2']:.1f} s |")
PY
