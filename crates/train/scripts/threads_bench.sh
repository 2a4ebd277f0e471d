#!/usr/bin/env bash
# The pace of a DiT training step with its batch split across threads (`--threads`), against one
# thread, measured in the same run: the same recipe and batches, ROUNDS alternating rounds of
# STEPS steps each, the median pace of each count and its ratio to one thread's.
#   bash crates/train/scripts/threads_bench.sh [VIDFARM_BIN] [MODEL] [STEPS] [ROUNDS] [THREADS...]
# defaults: target/debug/vidfarm, models/vidfarm-tiny, 30, 3, and thread counts 2.
set -euo pipefail
bin="${1:-target/debug/vidfarm}"
model="${2:-models/vidfarm-tiny}"
steps="${3:-30}"
rounds="${4:-3}"
shift $(( $# < 4 ? $# : 4 ))
counts=(1 "${@:-2}")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

train() { # OUT THREADS: a fresh run of STEPS steps; prints its pace in seconds a step
  "$bin" model train dit --model "$model" --out "$1" --threads "$2" --steps "$steps" --clips 16 --seed 7 \
    --batch 8 --checkpoint-every 100000 --loss sample --object-weight 4 --pure-noise-fraction 0.5 2>&1 |
    sed -n 's/.*, \([0-9.]*\) s a step$/\1/p' | tail -1
}

# Encode the clips once; every run reads them from its folder's cache.
train "$work/encode" 1 > /dev/null
declare -A paces
for round in $(seq "$rounds"); do
  for threads in "${counts[@]}"; do
    out="$work/run-$round-$threads"
    mkdir -p "$out" && cp "$work"/encode/latents-*.safetensors "$out"/
    pace="$(train "$out" "$threads")"
    echo "round $round, $threads thread(s): $pace s a step"
    paces[$threads]+="$pace "
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
one="$(echo "${paces[1]}" | median)"
for threads in "${counts[@]}"; do
  pace="$(echo "${paces[$threads]}" | median)"
  echo "$threads thread(s): median $pace s a step, $(awk -v a="$one" -v b="$pace" 'BEGIN { printf "%.2f", a / b }')x one thread's pace"
done
