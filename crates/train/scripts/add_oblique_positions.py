"""Gives a DiT with position features the oblique ones too (`position_oblique`: features of
column -+ time and row -+ time), so training goes on from what it learnt.

    python3 crates/train/scripts/add_oblique_positions.py OLD_MODEL NEW_MODEL

OLD_MODEL is a model folder whose transformer has `position_frequencies` set and no oblique
features; NEW_MODEL is written as a copy of it with `"position_oblique": true` and zero weights
for the new features (they follow the old ones in `position_embedding.weight`'s columns), so the
new model predicts what the old one did until it trains. Needs numpy and safetensors (pip).
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

OBLIQUE_COORDINATES = 4  # column - time, column + time, row - time, row + time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.new.exists():
        raise SystemExit(f"{args.new} exists; give a new folder")
    config_path = args.old / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    frequencies = config.get("position_frequencies", 0)
    if not frequencies or config.get("position_oblique"):
        raise SystemExit(f"{config_path}: needs position_frequencies and no position_oblique")
    shutil.copytree(args.old, args.new)

    config["position_oblique"] = True
    (args.new / "transformer" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights_path = args.new / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_path)
    old = weights["position_embedding.weight"]  # [dim, features]
    added = np.zeros((old.shape[0], OBLIQUE_COORDINATES * 2 * frequencies), np.float32)
    weights["position_embedding.weight"] = np.concatenate([old, added], axis=1)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}, weights_path, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
