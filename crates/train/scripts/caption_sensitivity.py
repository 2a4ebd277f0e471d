"""How much each part of the caption steers the DiT where sampling starts: the clean latents it
predicts from pure noise (sigma 1: x0 = noise - flow) for captions that differ in one attribute
only (the object's colour, its shape, its motion, the background), as the RMS difference between
those predictions (around one base caption, a red circle moving right on white), averaged over
attribute pairs and noise draws. A DiT that has
learnt an attribute moves the object (or repaints it) when the word changes, so its row is of
the order of the colour row; a row near zero is an attribute the DiT ignores, whatever sampling
does afterwards. Cheap (no sampling, no VAE): a progress signal for training runs. Then, for
the four straight motions, where the predicted object is in each latent frame (the centroid of
the latent values that differ most from the frame's median, the background): a DiT that follows
the motion words moves it the named way, one that ignores them prints four equal rows.

    python3 crates/train/scripts/caption_sensitivity.py MODEL [--vidfarm target/release/vidfarm]
        [--base blue circle white]   # another base caption (colour, shape, background)

Needs numpy and safetensors (pip) and a vidfarm binary (`vidfarm model forward`).
"""
import argparse
import itertools
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

COLOURS = ["red", "blue", "yellow", "green"]
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["moving to the right", "moving to the left", "moving up", "moving down", "growing", "bouncing"]
BACKGROUNDS = ["white", "black", "purple"]
BASE = {"colour": "red", "shape": "circle", "motion": "moving to the right", "background": "white"}
VARIANTS = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS, "background": BACKGROUNDS}


def caption(colour, shape, motion, background):
    article = lambda word: "an" if word[0] in "aeiou" else "a"
    return f"{article(colour)} {colour} {shape} {motion} on {article(background)} {background} background"


def forward(vidfarm, component, checkpoint, inputs, scratch):
    src, out = scratch / f"{component}-in.safetensors", scratch / f"{component}-out.safetensors"
    save_file(inputs, src)
    subprocess.run([vidfarm, "model", "forward", "--component", component, "--checkpoint", str(checkpoint),
                    "--inputs", str(src), "--out", str(out)], check=True, capture_output=True)
    return next(iter(load_file(out).values()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--vidfarm", default="target/release/vidfarm")
    parser.add_argument("--frames", type=int, default=9, help="latent frames (a 4 s clip of vidfarm-tiny)")
    parser.add_argument("--side", type=int, default=16, help="latent pixels per side")
    parser.add_argument("--noises", type=int, default=3)
    parser.add_argument("--base", nargs=3, metavar=("COLOUR", "SHAPE", "BACKGROUND"), help="the base caption's attributes")
    args = parser.parse_args()
    base = dict(BASE)
    if args.base:
        base.update(zip(["colour", "shape", "background"], args.base))

    vocab = json.loads((args.model / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    max_len = json.loads((args.model / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
    channels = json.loads((args.model / "transformer" / "config.json").read_text())["in_channels"]
    captions = []
    for attribute, values in VARIANTS.items():
        for value in values:
            captions.append(caption(**{**base, attribute: value}))
    captions = sorted(set(captions))
    ids = np.zeros((len(captions), max_len), np.int64)
    mask = np.zeros_like(ids)
    for i, text in enumerate(captions):
        tokens = [vocab[w] for w in text.split()] + [vocab["</s>"]]
        ids[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        text = forward(args.vidfarm, "text", args.model / "text_encoder", {"input_ids": ids, "attention_mask": mask}, scratch)
        text = (text * mask[..., None]).astype(np.float32)  # the pipeline zeroes padding
        x0 = {}
        for draw in range(args.noises):
            noise = np.random.default_rng(draw).standard_normal((1, channels, args.frames, args.side, args.side)).astype(np.float32)
            noise = np.repeat(noise, len(captions), axis=0)
            inputs = {"hidden_states": noise, "timestep": np.full(len(captions), 1000.0, np.float32), "encoder_hidden_states": text}
            flow = forward(args.vidfarm, "dit", args.model / "transformer", inputs, scratch)
            for i, text_i in enumerate(captions):
                x0[(draw, text_i)] = noise[i] - flow[i]
    rms = lambda a: float(np.sqrt(np.mean(a * a)))
    scale = np.mean([rms(v) for v in x0.values()])
    print(f"{args.model}: RMS of the predicted clean latents {scale:.3f}")
    print("attribute   RMS difference when only it changes")
    for attribute, values in VARIANTS.items():
        pairs = [(caption(**{**base, attribute: a}), caption(**{**base, attribute: b})) for a, b in itertools.combinations(values, 2)]
        diffs = [rms(x0[(d, a)] - x0[(d, b)]) for d in range(args.noises) for a, b in pairs]
        print(f"{attribute:11s} {np.mean(diffs):.3f}")
    # Ideally none: at sigma 1 the flow is noise - x0, so a DiT that carries its input through
    # predicts the same x0 from any noise.
    noise_diffs = [rms(x0[(a, c)] - x0[(b, c)]) for a, b in itertools.combinations(range(args.noises), 2) for c in captions]
    print(f"{'noise draw':11s} {np.mean(noise_diffs):.3f}  (same caption, another noise)")
    print("motion                 object centre (column, row) in latent frame 0, 1, ... (first noise draw)")
    for motion in MOTIONS[:4]:
        prediction = x0[(0, caption(**{**base, "motion": motion}))]
        print(f"{motion:22s} " + " ".join(f"({x:4.1f},{y:4.1f})" for x, y in object_centres(prediction)))


def object_centres(latents):
    """(column, row) per frame of `[channels, frames, height, width]`: the centroid of the distance
    from the frame's median latent, above its 70th percentile."""
    centres = []
    for frame in np.moveaxis(latents, 1, 0):
        background = np.median(frame.reshape(frame.shape[0], -1), axis=1)[:, None, None]
        distance = np.sqrt(((frame - background) ** 2).sum(axis=0))
        weight = np.maximum(distance - np.percentile(distance, 70), 0) + 1e-12
        rows, columns = np.mgrid[0 : frame.shape[1], 0 : frame.shape[2]]
        centres.append(((weight * columns).sum() / weight.sum(), (weight * rows).sum() / weight.sum()))
    return centres


if __name__ == "__main__":
    main()
