"""Parity fixtures for the DiT: diffusers `WanTransformer3DModel` on two small random configs.

For each config writes `tests/fixtures/<name>/transformer/` (config.json + weights, the diffusers
layout, stored in half precision to keep the repo small; the reference outputs are computed from the
same rounded weights in f32) and `tests/fixtures/<name>/io.safetensors` with the inputs
`hidden_states`, `timestep`, `encoder_hidden_states` and the reference output `sample`.
Run: /opt/refpy/bin/python crates/model/parity/dit.py
"""

from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CONFIGS = {
    # diffusers' own test config: 2 heads x 12, 2 layers, text_dim 16; non-square frames.
    "dit_a": dict(
        model=dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ),
        latents=(2, 4, 2, 8, 12), text_tokens=7, timesteps=[999.0, 437.0], dtype=torch.float16,
    ),
    # 3 heads x 8, 3 layers, no cross-attention norm, more output than input channels, odd frame
    # count, height != width, bf16 weights.
    "dit_b": dict(
        model=dict(
            patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=8, in_channels=3,
            out_channels=5, text_dim=10, freq_dim=32, ffn_dim=40, num_layers=3,
            cross_attn_norm=False, qk_norm="rms_norm_across_heads", rope_max_seq_len=16, eps=1e-5,
        ),
        latents=(1, 3, 3, 10, 6), text_tokens=5, timesteps=[250.5], dtype=torch.bfloat16,
    ),
}


def build(name: str, spec: dict) -> None:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**spec["model"]).eval()
    with torch.no_grad():
        # Norm weights start at one and biases at zero; perturb them so a mis-loaded one shows up.
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.add_(0.3 * torch.randn_like(param))
        # Round to the storage dtype, then compute the reference in f32 from the rounded weights.
        for param in model.parameters():
            param.copy_(param.to(spec["dtype"]).float())
        hidden_states = torch.randn(*spec["latents"])
        batch = spec["latents"][0]
        text = torch.randn(batch, spec["text_tokens"], spec["model"]["text_dim"])
        timestep = torch.tensor(spec["timesteps"], dtype=torch.float32)
        sample = model(hidden_states, timestep, text, return_dict=False)[0]
    out = FIXTURES / name
    model.to(spec["dtype"]).save_pretrained(out / "transformer", safe_serialization=True)
    save_file(
        {"hidden_states": hidden_states, "timestep": timestep, "encoder_hidden_states": text, "sample": sample.contiguous()},
        out / "io.safetensors",
    )
    print(f"{name}: sample {tuple(sample.shape)} std {sample.std().item():.4f}")


if __name__ == "__main__":
    for fixture_name, fixture_spec in CONFIGS.items():
        build(fixture_name, fixture_spec)
