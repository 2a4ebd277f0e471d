"""The one-object training captions of the given attributes, one per line, for a curriculum stage
of `vidfarm model train dit` (each as `--only-caption`). Leaves out the held-out colour and shape
pairs (colour index mod 3 = shape index, as `is_held_out_pair` in crates/synth/src/scene.rs) and
objects of the background's colour, which training never shows; `vidfarm model train` refuses a
caption outside the training split.

    python3 crates/train/scripts/training_captions.py --backgrounds white black --motions right left up down
    C=(); while IFS= read -r c; do C+=(--only-caption "$c"); done < <(python3 crates/train/scripts/training_captions.py ...)
"""
import argparse
import itertools

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle"]
MOTIONS = {
    "left": "moving to the left", "right": "moving to the right", "up": "moving up", "down": "moving down",
    "upleft": "moving up and to the left", "upright": "moving up and to the right",
    "downleft": "moving down and to the left", "downright": "moving down and to the right",
    "bouncing": "bouncing", "growing": "growing", "shrinking": "shrinking",
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--colours", nargs="+", choices=COLOURS, default=COLOURS)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=SHAPES)
    parser.add_argument("--backgrounds", nargs="+", choices=COLOURS, default=COLOURS)
    parser.add_argument("--motions", nargs="+", choices=list(MOTIONS), default=list(MOTIONS))
    args = parser.parse_args()
    article = lambda word: "an" if word[0] in "aeiou" else "a"
    for colour, shape, background, motion in itertools.product(args.colours, args.shapes, args.backgrounds, args.motions):
        if colour == background or COLOURS.index(colour) % len(SHAPES) == SHAPES.index(shape):
            continue
        print(f"{article(colour)} {colour} {shape} {MOTIONS[motion]} on {article(background)} {background} background")


if __name__ == "__main__":
    main()
