"""Parity fixtures for the text encoder: transformers `UMT5EncoderModel` on a small random config.

Writes `tests/fixtures/text_encoder/text_encoder/` (config.json + model.safetensors) and
`tests/fixtures/text_encoder/io.safetensors` (input ids, attention mask, last_hidden_state).
Run: /opt/refpy/bin/python crates/model/parity/text.py
"""

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "text_encoder"

torch.manual_seed(0)
config = UMT5Config(
    vocab_size=100,
    d_model=32,
    num_layers=2,
    num_heads=4,
    d_kv=8,
    d_ff=64,
    relative_attention_num_buckets=32,
    # Small, so a 24-token sequence reaches the logarithmic buckets and the clamp at the last one.
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",
    attn_implementation="eager",
)
model = UMT5EncoderModel(config).eval()
with torch.no_grad():
    # Layer-norm scales start at one; perturb them so a mis-loaded scale shows up in the outputs.
    for name, param in model.named_parameters():
        if "layer_norm" in name:
            param.add_(0.3 * torch.randn_like(param))
        # Stored in f16 to keep the repository small; the reference runs in f32 on the rounded weights.
        param.copy_(param.half().float())

seq_len = 24
input_ids = torch.randint(1, 100, (2, seq_len))
attention_mask = torch.ones(2, seq_len, dtype=torch.long)
attention_mask[1, 15:] = 0  # the second prompt is shorter: padded with id 0
input_ids[1, 15:] = 0
with torch.no_grad():
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
print(f"last_hidden_state {tuple(hidden.shape)} std {hidden.std().item():.4f}")

model.half().save_pretrained(OUT / "text_encoder", safe_serialization=True)
save_file(
    {"input_ids": input_ids, "attention_mask": attention_mask, "last_hidden_state": hidden.contiguous()},
    OUT / "io.safetensors",
)
