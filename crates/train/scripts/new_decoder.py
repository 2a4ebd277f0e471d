"""Gives a trained model a new VAE decoder (random weights, any width) and keeps everything else,
the encoder included, so the latents a DiT was trained on stay as they were; then
`vidfarm model train vae --decoder-only` trains the new decoder on them.

    python3 crates/train/scripts/new_decoder.py OLD_MODEL NEW_MODEL --decoder-base-dim 32 [--seed 0] [--vidfarm BIN]

The random decoder comes from `vidfarm model init` (the trainer's own initialisation) run on a
copy of OLD_MODEL's configs whose vae/config.json sets `decoder_base_dim`; NEW_MODEL is OLD_MODEL
with that config and the decoder's weights (`decoder.*`, `post_quant_conv.*`) from it.
Needs numpy and safetensors (pip) and a built `vidfarm`.
"""
import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from safetensors.numpy import load_file, save_file

VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
CONFIG_PARTS = ("transformer", "vae", "text_encoder")
MODEL_ITEMS = ("model_index.json", "vidfarm.toml", "scheduler", "tokenizer")


def copy_items(source, target, items):
    for item in items:
        (shutil.copytree if (source / item).is_dir() else shutil.copy)(source / item, target / item)


def random_model(old, decoder_base_dim, seed, vidfarm, scratch):
    """A folder with OLD's configs (the VAE's with the new width) and random weights."""
    copy_items(old, scratch, MODEL_ITEMS)
    for part in CONFIG_PARTS:
        (scratch / part).mkdir()
        shutil.copy(old / part / "config.json", scratch / part / "config.json")
    config_path = scratch / "vae/config.json"
    config = json.loads(config_path.read_text())
    config["decoder_base_dim"] = decoder_base_dim
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    subprocess.run([vidfarm, "model", "init", str(scratch), "--seed", str(seed)], check=True)
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--decoder-base-dim", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vidfarm", default="vidfarm")
    args = parser.parse_args()
    if args.new.exists():
        raise SystemExit(f"{args.new} exists")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config = random_model(args.old, args.decoder_base_dim, args.seed, args.vidfarm, scratch)
        fresh = load_file(scratch / VAE_WEIGHTS)
        args.new.mkdir(parents=True)
        copy_items(args.old, args.new, MODEL_ITEMS + CONFIG_PARTS)
        weights = {k: v for k, v in load_file(args.new / VAE_WEIGHTS).items() if not k.startswith(DECODER_PREFIXES)}
        weights.update({k: v for k, v in fresh.items() if k.startswith(DECODER_PREFIXES)})
        save_file(weights, args.new / VAE_WEIGHTS)
        (args.new / "vae/config.json").write_text(json.dumps(config, indent=2) + "\n")
    decoder = sum(v.size for k, v in weights.items() if k.startswith(DECODER_PREFIXES))
    print(f"{args.new}: decoder base width {args.decoder_base_dim}, {decoder} decoder parameters (random)")


if __name__ == "__main__":
    main()
