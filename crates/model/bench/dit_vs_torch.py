"""Speed of one DiT forward on CPU: vidfarm (burn, `vidfarm model forward --component dit`) against
diffusers `WanTransformer3DModel` on the same random weights and inputs, in the same run.

Builds a small random config, saves it with `save_pretrained` (f32) into a temp folder, writes the
inputs as safetensors, then alternates ROUNDS times: one `vidfarm model forward --repeat N` process
(its first run is a warm-up and is dropped; load time is not counted) and N timed PyTorch forwards
(after one warm-up, under `torch.no_grad`). Both use the same thread count (torch.set_num_threads,
RAYON_NUM_THREADS for burn's Flex backend). Checks that the Rust output matches torch and prints a
table and a JSON line with the median seconds per forward and the ratio rust / torch.

Run (after `cargo build --release -p vidfarm`):
  /opt/refpy/bin/python crates/model/bench/dit_vs_torch.py [--bin target/release/vidfarm]
      [--repeat 5] [--rounds 3] [--threads N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[3]

MODEL = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
    out_channels=16, text_dim=64, freq_dim=256, ffn_dim=512, num_layers=4,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
)
LATENTS = (1, 16, 5, 24, 24)  # 5 x 12 x 12 = 720 tokens after the (1, 2, 2) patch embedding
TEXT_TOKENS = 32
TIMESTEP = 637.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(REPO / "target" / "release" / "vidfarm"))
    parser.add_argument("--repeat", type=int, default=5, help="timed forwards per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternations rust / torch")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**MODEL).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.add_(0.3 * torch.randn_like(param))
    hidden_states = torch.randn(*LATENTS)
    text = torch.randn(LATENTS[0], TEXT_TOKENS, MODEL["text_dim"])
    timestep = torch.tensor([TIMESTEP] * LATENTS[0], dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(prefix="vidfarm-bench-") as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "transformer", safe_serialization=True)
        save_file(
            {"hidden_states": hidden_states, "timestep": timestep, "encoder_hidden_states": text},
            tmp / "inputs.safetensors",
        )
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        cmd = [
            args.bin, "model", "forward", "--component", "dit",
            "--checkpoint", str(tmp / "transformer"), "--inputs", str(tmp / "inputs.safetensors"),
            "--out", str(tmp / "out.safetensors"), "--repeat", str(args.repeat),
        ]

        rust_s, torch_s, loads = [], [], []
        with torch.no_grad():
            reference = model(hidden_states, timestep, text, return_dict=False)[0]  # also the warm-up
            for round_ in range(args.rounds):
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"vidfarm failed ({proc.returncode}):\n{proc.stderr}")
                line = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")][-1]
                timing = json.loads(line)
                loads.append(timing["load_s"])
                rust_round = timing["run_s"][1:]  # the first run is a warm-up
                rust_s += rust_round

                torch_round = []
                model(hidden_states, timestep, text, return_dict=False)  # warm-up
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    model(hidden_states, timestep, text, return_dict=False)
                    torch_round.append(time.perf_counter() - started)
                torch_s += torch_round
                print(
                    f"round {round_ + 1}: rust median {statistics.median(rust_round):.4f} s, "
                    f"torch median {statistics.median(torch_round):.4f} s",
                    file=sys.stderr,
                )
        sample = load_file(tmp / "out.safetensors")["sample"]
        max_abs = (sample - reference).abs().max().item()

    rust_med, torch_med = statistics.median(rust_s), statistics.median(torch_s)
    result = {
        "config": dict(MODEL, latents=list(LATENTS), text_tokens=TEXT_TOKENS, parameters=params),
        "threads": args.threads,
        "forwards_per_side": len(rust_s),
        "rust_median_s": rust_med,
        "rust_min_s": min(rust_s),
        "rust_max_s": max(rust_s),
        "rust_load_median_s": statistics.median(loads),
        "torch_median_s": torch_med,
        "torch_min_s": min(torch_s),
        "torch_max_s": max(torch_s),
        "ratio_rust_over_torch": rust_med / torch_med,
        "max_abs_error": max_abs,
        "torch_version": torch.__version__,
    }
    print(f"DiT forward, {params} parameters, latents {LATENTS}, {TEXT_TOKENS} text tokens, "
          f"{args.threads} threads, {len(rust_s)} forwards per side in {args.rounds} alternating rounds")
    print(f"{'':8} {'median s':>10} {'min s':>10} {'max s':>10}")
    print(f"{'rust':8} {rust_med:10.4f} {min(rust_s):10.4f} {max(rust_s):10.4f}")
    print(f"{'torch':8} {torch_med:10.4f} {min(torch_s):10.4f} {max(torch_s):10.4f}")
    print(f"ratio rust/torch (medians): {rust_med / torch_med:.2f}; max abs error vs torch: {max_abs:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
