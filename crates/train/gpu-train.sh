#!/usr/bin/env bash
# Trains several configs side by side on one GPU within a fixed time, with a CUDA build of
# `vidfarm-train` (crates/synth/TRAINING.md, "On a GPU"). Each config is a folder CONFIG holding
# args.txt (the train flags), either a model folder or a file `model` naming one, and optionally
# `stage` (`dit`, the default, or `vae`); a dit config also holds clips.txt (clips to encode at
# most). Every config is first probed (40 steps, on 64 clips for dit, all at once, as the real
# runs share the GPU), then trained for what is left of BUDGET_SECONDS with a cosine schedule
# sized from its measured pace. The latest checkpoint (a model folder, without the optimizer
# state and the cached latents) is packed into OUT as CONFIG.tar every minute, so a run cut short
# still returns it.
#
# PROBE_STEPS, PROBE_CLIPS and CHECKPOINT_EVERY change the defaults (40, 64, 250) for a dry run on a CPU build.
#
# Usage: OUT=dir bash crates/train/gpu-train.sh BUDGET_SECONDS BIN CONFIG_DIR...
set -u
start=$(date +%s)
budget=$1 bin=$2; shift 2
mkdir -p "$OUT"
log=$OUT/log.txt
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$log"; }
model_of() { cat "$1/model" 2>/dev/null || echo "$1"; }
stage_of() { cat "$1/stage" 2>/dev/null || echo dit; }
name_of() { basename "$1"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
# NVRTC needs the CUDA headers (CUDA_PATH) and its library; libcuda comes with the driver.
[ -n "${CUDA_PATH:-}" ] || for d in /usr/local/cuda /opt/cuda; do [ -d $d/include ] && export CUDA_PATH=$d && break; done
nvrtc=$(find / -xdev -name 'libnvrtc.so*' -not -path '*/stubs/*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${nvrtc}${LD_LIBRARY_PATH:-}"
say "CUDA_PATH=${CUDA_PATH:-none} LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

pids=()
for cfg in "$@"; do
  n=$(name_of "$cfg")
  "$bin" $(stage_of "$cfg") --model "$(model_of "$cfg")" --out /tmp/probe-$n $(cat "$cfg/args.txt") --clips ${PROBE_CLIPS:-64} \
    --steps ${PROBE_STEPS:-40} --checkpoint-every $(( ${PROBE_STEPS:-40} / 2 )) > /tmp/probe-$n.log 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for cfg in "$@"; do n=$(name_of "$cfg"); say "probe $n:"; tail -4 /tmp/probe-$n.log | tee -a "$log"; done

pids=()
for cfg in "$@"; do
  n=$(name_of "$cfg") stage=$(stage_of "$cfg")
  pace=$(grep -o '[0-9.]* s a step' /tmp/probe-$n.log | tail -1 | cut -d' ' -f1)
  per_clip=$(grep -o '[0-9.]* s a clip' /tmp/probe-$n.log | cut -d' ' -f1)
  # A vae run encodes no clips up front: its batches are rendered as it goes.
  [ $stage = vae ] && per_clip=0
  [ -n "$pace" ] && [ -n "$per_clip" ] || { say "$n: the probe failed, skipped"; continue; }
  left=$(( budget - $(elapsed) ))
  # At most a sixth of what is left goes to encoding clips; 40 s for start-up and kernels.
  clips=0
  [ $stage = dit ] &&
    clips=$(python3 -c "print(min($(cat "$cfg/clips.txt"), max(256, int($left / 6 / max($per_clip, 1e-4)) // 64 * 64)))")
  steps=$(python3 -c "print(max(100, int(($left - 40 - $per_clip * $clips) / ($pace * 1.1) / 100) * 100))")
  warm=$(( steps / 20 ))
  say "$n: $pace s a step, $per_clip s a clip, $left s left: $clips clips, $steps steps"
  "$bin" $stage --model "$(model_of "$cfg")" --out /tmp/run-$n $(cat "$cfg/args.txt") --clips $clips --steps $steps \
    --warmup-steps $warm --decay-steps $(( steps - warm )) --checkpoint-every ${CHECKPOINT_EVERY:-250} > /tmp/run-$n.log 2>&1 &
  pids+=($!)
done

pack() {
  for cfg in "$@"; do
    n=$(name_of "$cfg")
    [ -f /tmp/run-$n/train_state.json ] && tar -C /tmp/run-$n -cf "$OUT/$n.tar.partial" --exclude='optimizer*' \
      --exclude='latents-*' --exclude='.checkpoint-partial' . 2>/dev/null && mv "$OUT/$n.tar.partial" "$OUT/$n.tar"
  done
}
# Stop the runs shortly before the budget ends, packing the checkpoints every minute meanwhile.
any_running() { for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
while [ $(elapsed) -lt $(( budget - 15 )) ] && any_running; do
  sleep 5
  [ $(( $(elapsed) % 60 )) -lt 5 ] && pack "$@"
done
kill "${pids[@]}" 2>/dev/null
wait "${pids[@]}" 2>/dev/null
pack "$@"
for cfg in "$@"; do n=$(name_of "$cfg"); say "run $n:"; tr '\r' '\n' < /tmp/run-$n.log | tail -6 | tee -a "$log"; done
ls -la "$OUT" | tee -a "$log"
