"""Tokenizer fixtures: the word-level tokenizer vidfarm ships with its small model, a small
Unigram tokenizer laid out like umT5's, and the reference encodings of a few prompts.

Writes `tests/fixtures/tokenizer_words/tokenizer.json`, `tests/fixtures/tokenizer_unigram/tokenizer.json`
and `expected.json` next to each (ids and masks from the `tokenizers` library, padded and
truncated to `max_len` as transformers does for Wan: `padding="max_length", truncation=True`).
Run: /opt/refpy/bin/python crates/model/parity/tokenizers_fixtures.py
"""

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, decoders

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
WORDS = (
    "red green blue yellow orange purple white black "
    "circle square triangle circles squares triangles "
    "a an on background moving to the left right up down and bouncing growing shrinking diagonally two"
).split()
PROMPTS = [
    ("a red circle moving to the left on a black background", 16),
    ("Two Blue squares, bouncing!", 8),
    ("a square jumping over the fence </s>", 10),
    ("a purple zebra and a green unicorn moving up", 12),
    ("a white triangle growing and shrinking diagonally on the yellow background", 6),
    ("", 4),
]


def word_level() -> Tokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Case and punctuation do not change a word: "Blue," is "blue".
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z0-9\s]"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def unigram() -> Tokenizer:
    # umT5's layout (Unigram + Metaspace, "</s>" appended) with a toy vocabulary: no "z", so
    # "zebra" contains an unknown piece.
    pieces = [(token, 0.0) for token in SPECIALS]
    pieces += [("▁" + word, -2.0 - 0.1 * len(word)) for word in WORDS[:14]]
    pieces += [("▁", -3.0)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxy"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


for name, tokenizer in [("tokenizer_words", word_level()), ("tokenizer_unigram", unigram())]:
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    expected = []
    for text, max_len in PROMPTS:
        tokenizer.enable_truncation(max_len)
        tokenizer.enable_padding(length=max_len, pad_id=0, pad_token="<pad>")
        encoding = tokenizer.encode(text)
        expected.append({"text": text, "max_len": max_len, "ids": encoding.ids, "mask": encoding.attention_mask})
        print(name, text, encoding.tokens)
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
