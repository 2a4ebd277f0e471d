"""End-to-end parity fixture: diffusers `WanPipeline` (text-to-video) assembled from tiny random
components, run with UniPC and classifier-free guidance from a fixed noise.

Writes `tests/fixtures/pipeline/wan_tiny/` (the folder `WanPipeline.save_pretrained` writes; the
word-level tokenizer of `tests/fixtures/tokenizer_words`) and `tests/fixtures/pipeline/io.safetensors`
with the `noise`, the `prompt_embeds` / `negative_prompt_embeds`, the final normalised `latents`
and the decoded `video` in [-1, 1].
Run: /opt/refpy/bin/python crates/model/parity/pipeline.py
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIXTURES / "pipeline"
PROMPT = "a red circle moving to the left"
NEGATIVE = "blue square"
MAX_SEQUENCE_LENGTH = 12
STEPS, GUIDANCE, FLOW_SHIFT = 4, 4.0, 3.0
FRAMES, HEIGHT, WIDTH = 5, 16, 32


def half_rounded(module: torch.nn.Module) -> torch.nn.Module:
    """Round weights through f16 so the stored (f16) and computed (f32) weights agree."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())
    return module


torch.manual_seed(0)
tokenizer = PreTrainedTokenizerFast(
    tokenizer_file=str(FIXTURES / "tokenizer_words" / "tokenizer.json"),
    pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
)
text_encoder = half_rounded(UMT5EncoderModel(UMT5Config(
    vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
)).eval())
transformer = WanTransformer3DModel(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=6, in_channels=16, out_channels=16,
    text_dim=16, freq_dim=16, ffn_dim=24, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
).eval()
with torch.no_grad():
    for name, param in transformer.named_parameters():
        if "norm" in name:
            param.add_(0.3 * torch.randn_like(param))
half_rounded(transformer)
vae = AutoencoderKLWan(
    base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
).eval()
half_rounded(vae)
scheduler = UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=FLOW_SHIFT
)
pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)

generator = torch.Generator().manual_seed(1)
noise = torch.randn(1, 16, 1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8, generator=generator)
with torch.no_grad():
    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
        PROMPT, NEGATIVE, do_classifier_free_guidance=True, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    common = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise.clone(),
        max_sequence_length=MAX_SEQUENCE_LENGTH, return_dict=False,
    )
    latents = pipe(**common, output_type="latent")[0]
    z_mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    z_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    video = vae.decode(latents / z_std + z_mean, return_dict=False)[0]

pipe.text_encoder.half()
pipe.transformer.half()
pipe.vae.half()
pipe.save_pretrained(OUT / "wan_tiny", safe_serialization=True)
save_file(
    {
        "noise": noise, "prompt_embeds": prompt_embeds.contiguous(),
        "negative_prompt_embeds": negative_prompt_embeds.contiguous(),
        "latents": latents.contiguous(), "video": video.contiguous(),
    },
    OUT / "io.safetensors",
)
print("latents", tuple(latents.shape), "std", latents.std().item(), "video", tuple(video.shape))
