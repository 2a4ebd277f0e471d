"""Parity fixtures for the causal video VAE: diffusers `AutoencoderKLWan` on small random configs.

Writes `tests/fixtures/NAME/vae/` (config.json + weights, the diffusers layout) and
`tests/fixtures/NAME/io.safetensors` (inputs and reference outputs) next to this crate, for NAME
`vae` (encode and decode) and `vae_wide_decoder` (decode; a decoder wider than the encoder).
Run: /opt/refpy/bin/python crates/model/parity/vae.py
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def write_fixture(name, seed, encode, **config):
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**config).eval()
    with torch.no_grad():
        # RMS-norm scales start at one; perturb them so a mis-loaded scale shows up in the outputs.
        for param_name, param in vae.named_parameters():
            if param_name.endswith("gamma"):
                param.add_(0.3 * torch.randn_like(param))
            # Stored in f16 to keep the repository small; the reference runs in f32 on the rounded weights.
            param.copy_(param.half().float())

    height, width = 16, 24  # not square, so a swapped height/width axis fails the test
    tensors = {}
    with torch.no_grad():
        for latent_frames in (1, 3):
            z = torch.randn(1, 16, latent_frames, height // 8, width // 8)
            tensors[f"decode{latent_frames}.z"] = z
            tensors[f"decode{latent_frames}.sample"] = vae.decode(z).sample
        if encode:
            video = torch.rand(1, 3, 9, height, width) * 2 - 1
            tensors["encode.x"] = video
            tensors["encode.mean"] = vae.encode(video).latent_dist.mean

    for tensor_name, t in tensors.items():
        clamped = (t.abs() >= 1).float().mean().item() if tensor_name.endswith("sample") else 0.0
        print(f"{name} {tensor_name}: {tuple(t.shape)} std {t.std().item():.4f} clamped {clamped:.2%}")

    vae.half().save_pretrained(FIXTURES / name / "vae", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, FIXTURES / name / "io.safetensors")


# The small config of diffusers' own AutoencoderKLWan tests, with one mid-block attention and
# the Wan2.1 temporal layout (4x in time, 8x in space).
SMALL = dict(z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
write_fixture("vae", 0, True, base_dim=3, **SMALL)
# A decoder wider than its encoder (`decoder_base_dim`; crates/train/scripts/new_decoder.py makes one).
write_fixture("vae_wide_decoder", 1, False, base_dim=3, decoder_base_dim=6, **SMALL)
