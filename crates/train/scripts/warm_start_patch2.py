"""Makes a patch-1x2x2 DiT from a trained patch-1x4x4 one (vidfarm-tiny), so training starts
from what the old one learnt instead of from noise.

    python3 crates/train/scripts/warm_start_patch2.py OLD_MODEL NEW_MODEL [--position-frequencies N]

OLD_MODEL is a model folder with a patch-4 transformer; NEW_MODEL is written as a copy of it with
`patch_size` [1, 2, 2], `spatial_factor` halved in vidfarm.toml and, with N > 0, vidfarm's
absolute position features (`position_frequencies`, `position_embedding.*` zero, so the new model
predicts what the old one did until it trains). The blocks and the text encoder never see the
patch size and carry over. The new patch kernel is the sum of the old one's four 2x2 quadrants (a
flat patch embeds as before); the new output rows are the mean of the old ones of the four
quadrants. Needs numpy and safetensors (pip).
"""
import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--position-frequencies", type=int, default=0)
    args = parser.parse_args()
    if args.new.exists():
        raise SystemExit(f"{args.new} exists; give a new folder")
    shutil.copytree(args.old, args.new)

    config_path = args.new / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    if config["patch_size"] != [1, 4, 4]:
        raise SystemExit(f"{config_path}: patch_size is {config['patch_size']}, expected [1, 4, 4]")
    config["patch_size"] = [1, 2, 2]
    if args.position_frequencies:
        config["position_frequencies"] = args.position_frequencies
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    toml_path = args.new / "vidfarm.toml"
    toml = toml_path.read_text()
    factor = int(re.search(r"^spatial_factor = (\d+)$", toml, re.M).group(1))
    toml = re.sub(r"^spatial_factor = \d+$", f"spatial_factor = {factor // 2}", toml, flags=re.M)
    toml_path.write_text(toml.replace("times patch 4", "times patch 2"))

    weights_path = args.new / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_path)
    channels, dim = config["out_channels"], config["num_attention_heads"] * config["attention_head_dim"]
    quadrants = [(i, j) for i in range(2) for j in range(2)]
    kernel = weights["patch_embedding.weight"]  # [dim, in, 1, 4, 4]
    weights["patch_embedding.weight"] = sum(kernel[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2] for i, j in quadrants)
    # proj_out rows are ordered (patch t, patch h, patch w, channel).
    w = weights["proj_out.weight"].reshape(4, 4, channels, dim)
    b = weights["proj_out.bias"].reshape(4, 4, channels)
    weights["proj_out.weight"] = (sum(w[2 * i:2 * i + 2, 2 * j:2 * j + 2] for i, j in quadrants) / 4).reshape(4 * channels, dim)
    weights["proj_out.bias"] = (sum(b[2 * i:2 * i + 2, 2 * j:2 * j + 2] for i, j in quadrants) / 4).reshape(4 * channels)
    if args.position_frequencies:
        features = 3 * 2 * args.position_frequencies
        weights["position_embedding.weight"] = np.zeros((dim, features), np.float32)
        weights["position_embedding.bias"] = np.zeros((dim,), np.float32)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}, weights_path, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
