"""Parity fixtures for the flow-matching samplers: diffusers `FlowMatchEulerDiscreteScheduler`,
`FlowMatchHeunDiscreteScheduler` and `UniPCMultistepScheduler` configured as the Wan pipeline uses it
(`prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `flow_shift`; solver order 2, bh2,
lower_order_final).

For each case writes `tests/fixtures/schedulers/<case>.safetensors` with the schedule (`timesteps`,
`sigmas`), the initial `sample`, the fixed sequence of `model_outputs` fed to `step` (one per
timestep) and the `latents` after every step.
Run: /opt/refpy/bin/python crates/model/parity/schedulers.py
"""

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schedulers"
SHAPE = (1, 2, 3, 2, 3)


def make(sampler: str, shift: float):
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if sampler == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # As in diffusers' WanPipeline example and the Wan2.1 diffusers scheduler_config.json.
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=shift
    )


def trajectory(sampler: str, steps: int, shift: float, seed: int) -> dict:
    scheduler = make(sampler, shift)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=generator)
    timesteps = scheduler.timesteps
    model_outputs = torch.randn((len(timesteps), *SHAPE), generator=generator)
    latents = []
    x = sample
    for t, model_output in zip(timesteps, model_outputs):
        x = scheduler.step(model_output, t, x, return_dict=False)[0]
        latents.append(x)
    return {
        "timesteps": timesteps.to(torch.float64),
        "sigmas": scheduler.sigmas.to(torch.float64),
        "sample": sample,
        "model_outputs": model_outputs,
        "latents": torch.stack(latents),
    }


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    cases = [("euler", 6, 3.0), ("heun", 5, 3.0), ("unipc", 8, 3.0), ("unipc", 3, 5.0), ("euler", 1, 1.0)]
    for index, (sampler, steps, shift) in enumerate(cases):
        name = f"{sampler}_{steps}steps_shift{shift:g}"
        tensors = trajectory(sampler, steps, shift, seed=index)
        save_file(tensors, OUT / f"{name}.safetensors")
        print(name, [round(t, 3) for t in tensors["timesteps"].tolist()])
