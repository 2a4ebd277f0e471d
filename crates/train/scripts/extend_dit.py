"""Adds one of vidfarm's DiT extensions to a trained model with zero weights, so the new model
predicts what the old one did until it trains on, from what it learnt (all but `sample`).

    python3 crates/train/scripts/extend_dit.py oblique OLD_MODEL NEW_MODEL
    python3 crates/train/scripts/extend_dit.py pooled-text OLD_MODEL NEW_MODEL
    python3 crates/train/scripts/extend_dit.py input-skip OLD_MODEL NEW_MODEL
    python3 crates/train/scripts/extend_dit.py input-gate OLD_MODEL NEW_MODEL
    python3 crates/train/scripts/extend_dit.py sample OLD_MODEL NEW_MODEL

`oblique`: position features of column -+ time and row -+ time (`position_oblique`; needs
`position_frequencies`); their weights follow the old features in `position_embedding.weight`'s
columns. `pooled-text`: the mean of the prompt's tokens joins the timestep embedding
(`pooled_text_modulation`, weights `condition_embedder.pooled_text_embedder.*`). `input-skip`:
the prediction (flow, or clean latents of a `sample` model) adds the noisy input times a gate of
the timestep (`input_skip`, weights `input_skip.*`).
`input-gate`: the patch tokens are scaled per channel by one plus a gate of the timestep
(`input_gate`, weights `patch_gate.*`). `sample`: the network outputs the clean latents
(`prediction_type` "sample"); the weights stay, but their output now means something else, so
NEW_MODEL renders nothing useful until trained on.
NEW_MODEL is written as a copy of OLD_MODEL with the flag set. Needs numpy and safetensors (pip).
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

OBLIQUE_COORDINATES = 4  # column - time, column + time, row - time, row + time


def add_oblique(config, weights):
    frequencies = config.get("position_frequencies", 0)
    if not frequencies or config.get("position_oblique"):
        raise SystemExit("oblique: needs position_frequencies and no position_oblique")
    config["position_oblique"] = True
    old = weights["position_embedding.weight"]  # [dim, features]
    added = np.zeros((old.shape[0], OBLIQUE_COORDINATES * 2 * frequencies), np.float32)
    weights["position_embedding.weight"] = np.concatenate([old, added], axis=1)


def zero_linear(flag, prefix, outputs, inputs):
    """An extension that is one linear layer `inputs -> outputs` (functions of the config) under
    `prefix`, switched on by the config key `flag`."""
    def add(config, weights):
        if config.get(flag):
            raise SystemExit(f"{flag}: the model has it already")
        config[flag] = True
        rows, columns = outputs(config), inputs(config)
        weights[f"{prefix}.weight"] = np.zeros((rows, columns), np.float32)
        weights[f"{prefix}.bias"] = np.zeros((rows,), np.float32)
    return add


def inner_dim(config):
    return config["num_attention_heads"] * config["attention_head_dim"]


def out_channels(config):
    return config.get("out_channels") or config["in_channels"]


add_pooled_text = zero_linear("pooled_text_modulation", "condition_embedder.pooled_text_embedder", inner_dim, lambda c: c["text_dim"])
add_input_skip = zero_linear("input_skip", "input_skip", out_channels, inner_dim)
add_input_gate = zero_linear("input_gate", "patch_gate", inner_dim, inner_dim)


def predict_sample(config, weights):
    if config.get("prediction_type") == "sample":
        raise SystemExit("sample: the model predicts the sample already")
    config["prediction_type"] = "sample"


EXTENSIONS = {"oblique": add_oblique, "pooled-text": add_pooled_text, "input-skip": add_input_skip,
              "input-gate": add_input_gate, "sample": predict_sample}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("extension", choices=EXTENSIONS)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.new.exists():
        raise SystemExit(f"{args.new} exists; give a new folder")
    config = json.loads((args.old / "transformer" / "config.json").read_text())
    weights_path = args.old / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_path)
    EXTENSIONS[args.extension](config, weights)
    shutil.copytree(args.old, args.new)
    (args.new / "transformer" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
        args.new / "transformer" / "diffusion_pytorch_model.safetensors",
        metadata={"format": "pt"},
    )


if __name__ == "__main__":
    main()
