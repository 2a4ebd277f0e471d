//! Flow-matching samplers, as diffusers computes them: the schedules (timesteps and sigmas) are plain
//! numbers; the step rules act on tensors of any rank. Sigma 1 is pure noise, 0 is data; the model
//! predicts the flow `noise - data`.
//!
//! - [`FlowMatchEulerDiscreteScheduler`] (first order, one model call per step),
//! - [`FlowMatchHeunDiscreteScheduler`] (second order, two calls per step except the last),
//! - [`UniPcMultistepScheduler`] in Wan's configuration (`flow_prediction`, flow sigmas,
//!   `flow_shift`, solver order 2, bh2, lower order final step, zero final sigma).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// The shift of the sigma schedule, `shift * s / (1 + (shift - 1) * s)`; >1 spends more steps at
/// high noise. Training draws its noise levels through it too, so they match the sampler's.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// `np.linspace(start, end, n)`.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { end } else { start + step * i as f64 }).collect()
        }
    }
}

/// Rounds through f32, as diffusers stores sigmas and timesteps in f32 tensors.
fn f32_round(value: f64) -> f64 {
    value as f32 as f64
}

/// The shifted sigmas of a flow-match Euler/Heun schedule (without the final zero), reproducing
/// diffusers exactly, including that the smallest training sigma is shifted once at construction
/// and the inference sigmas are shifted again.
fn flow_match_sigmas(steps: usize, shift: f64) -> Vec<f64> {
    let n = NUM_TRAIN_TIMESTEPS as f32;
    let shift32 = shift as f32;
    let smallest = 1.0f32 / n;
    let sigma_min = (shift32 * smallest / (1.0 + (shift - 1.0) as f32 * smallest)) as f64;
    let sigma_max = 1.0;
    let train = NUM_TRAIN_TIMESTEPS as f64;
    linspace(sigma_max * train, sigma_min * train, steps)
        .into_iter()
        .map(|t| f32_round(shift_sigma(t / train, shift)))
        .collect()
}

/// A fixed schedule: the model is evaluated at `timesteps[i]`; `sigmas` has one more entry (the
/// final noise level, 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

/// Sample update `sample + dt * derivative`, in f32 on the tensor's device.
fn euler_update<B: Backend, const D: usize>(sample: Tensor<B, D>, derivative: Tensor<B, D>, dt: f64) -> Tensor<B, D> {
    sample + derivative * dt
}

#[derive(Clone, Copy, Debug)]
pub struct FlowMatchEulerDiscreteScheduler {
    pub shift: f64,
}

impl FlowMatchEulerDiscreteScheduler {
    pub fn new(shift: f64) -> Self {
        Self { shift }
    }

    pub fn schedule(&self, steps: usize) -> Schedule {
        let mut sigmas = flow_match_sigmas(steps, self.shift);
        let timesteps = sigmas.iter().map(|s| f32_round(s * NUM_TRAIN_TIMESTEPS as f64)).collect();
        sigmas.push(0.0);
        Schedule { timesteps, sigmas }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FlowMatchHeunDiscreteScheduler {
    pub shift: f64,
}

impl FlowMatchHeunDiscreteScheduler {
    pub fn new(shift: f64) -> Self {
        Self { shift }
    }

    /// Every timestep after the first appears twice (predictor and corrector evaluation).
    pub fn schedule(&self, steps: usize) -> Schedule {
        let base = flow_match_sigmas(steps, self.shift);
        let mut timesteps = Vec::with_capacity(2 * steps);
        let mut sigmas = Vec::with_capacity(2 * steps + 1);
        for (i, &sigma) in base.iter().enumerate() {
            let repeats = if i == 0 { 1 } else { 2 };
            for _ in 0..repeats {
                timesteps.push(f32_round(sigma * NUM_TRAIN_TIMESTEPS as f64));
                sigmas.push(sigma);
            }
        }
        sigmas.push(0.0);
        Schedule { timesteps, sigmas }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct UniPcMultistepScheduler {
    pub flow_shift: f64,
}

impl UniPcMultistepScheduler {
    pub const SOLVER_ORDER: usize = 2;

    pub fn new(flow_shift: f64) -> Self {
        Self { flow_shift }
    }

    /// Flow sigmas `linspace(1, 1/1000, steps + 1)[:-1]`, shifted, the first nudged below 1;
    /// timesteps are `sigma * 1000` truncated to integers as diffusers does.
    pub fn schedule(&self, steps: usize) -> Schedule {
        let train = NUM_TRAIN_TIMESTEPS as f64;
        let mut sigmas: Vec<f64> = linspace(1.0, 1.0 / train, steps + 1)
            .into_iter()
            .take(steps)
            .map(|s| shift_sigma(s, self.flow_shift))
            .collect();
        if let Some(first) = sigmas.first_mut()
            && (*first - 1.0).abs() < 1e-6
        {
            *first -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|s| (s * train).trunc()).collect();
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(f32_round).collect();
        sigmas.push(0.0);
        Schedule { timesteps, sigmas }
    }
}

/// `log(alpha) - log(sigma)` for flow sigmas (alpha = 1 - sigma); +inf at sigma 0.
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// Which sampler, with its per-run state (previous derivatives / model outputs).
pub enum FlowSampler<B: Backend, const D: usize> {
    Euler { schedule: Schedule, index: usize },
    Heun { schedule: Schedule, index: usize, first_half: Option<(Tensor<B, D>, Tensor<B, D>, f64)> },
    UniPc { schedule: Schedule, index: usize, state: UniPcState<B, D> },
}

/// UniPC history: the last two data predictions, the sample before the last predictor step, and
/// the order the last predictor used.
pub struct UniPcState<B: Backend, const D: usize> {
    x0_predictions: Vec<Tensor<B, D>>,
    last_sample: Option<Tensor<B, D>>,
    last_order: usize,
    lower_order_nums: usize,
}

impl<B: Backend, const D: usize> FlowSampler<B, D> {
    pub fn euler(steps: usize, shift: f64) -> Self {
        Self::euler_from(steps, shift, 0)
    }

    /// An Euler sampler whose next step is `index` (0-based): Euler keeps no state between
    /// steps, so a run can go on from any step's sample.
    pub fn euler_from(steps: usize, shift: f64, index: usize) -> Self {
        Self::Euler { schedule: FlowMatchEulerDiscreteScheduler::new(shift).schedule(steps), index }
    }

    pub fn heun(steps: usize, shift: f64) -> Self {
        Self::Heun { schedule: FlowMatchHeunDiscreteScheduler::new(shift).schedule(steps), index: 0, first_half: None }
    }

    pub fn unipc(steps: usize, flow_shift: f64) -> Self {
        Self::UniPc {
            schedule: UniPcMultistepScheduler::new(flow_shift).schedule(steps),
            index: 0,
            state: UniPcState { x0_predictions: Vec::new(), last_sample: None, last_order: 0, lower_order_nums: 0 },
        }
    }

    pub fn schedule(&self) -> &Schedule {
        match self {
            Self::Euler { schedule, .. } | Self::Heun { schedule, .. } | Self::UniPc { schedule, .. } => schedule,
        }
    }

    /// Model evaluations still to do.
    pub fn remaining(&self) -> usize {
        let index = match self {
            Self::Euler { index, .. } | Self::Heun { index, .. } | Self::UniPc { index, .. } => *index,
        };
        self.schedule().timesteps.len().saturating_sub(index)
    }

    /// The noise level of the sample the next model evaluation sees, `None` when done.
    pub fn next_sigma(&self) -> Option<f64> {
        let index = match self {
            Self::Euler { index, .. } | Self::Heun { index, .. } | Self::UniPc { index, .. } => *index,
        };
        (index < self.schedule().timesteps.len()).then(|| self.schedule().sigmas[index])
    }

    /// The timestep the next model evaluation is at, `None` when done.
    pub fn next_timestep(&self) -> Option<f64> {
        let index = match self {
            Self::Euler { index, .. } | Self::Heun { index, .. } | Self::UniPc { index, .. } => *index,
        };
        self.schedule().timesteps.get(index).copied()
    }

    /// Advances one step given the model's flow prediction at `next_timestep()`. Calling it after
    /// the schedule has ended returns the sample unchanged.
    pub fn step(&mut self, model_output: Tensor<B, D>, sample: Tensor<B, D>) -> Tensor<B, D> {
        if self.remaining() == 0 {
            return sample;
        }
        match self {
            Self::Euler { schedule, index } => {
                let (sigma, sigma_next) = (schedule.sigmas[*index], schedule.sigmas[*index + 1]);
                *index += 1;
                euler_update(sample, model_output, sigma_next - sigma)
            }
            Self::Heun { schedule, index, first_half } => {
                let out = match first_half.take() {
                    None => {
                        // Predictor: Euler step to the next sigma, remembering where it started.
                        let (sigma, sigma_next) = (schedule.sigmas[*index], schedule.sigmas[*index + 1]);
                        let dt = sigma_next - sigma;
                        let out = euler_update(sample.clone(), model_output.clone(), dt);
                        *first_half = Some((sample, model_output, dt));
                        out
                    }
                    Some((start, first_derivative, dt)) => {
                        // Corrector: average the two flow estimates, restart from the saved sample.
                        let derivative = (first_derivative + model_output) * 0.5;
                        euler_update(start, derivative, dt)
                    }
                };
                *index += 1;
                out
            }
            Self::UniPc { schedule, index, state } => {
                let out = unipc_step(schedule, *index, state, model_output, sample);
                *index += 1;
                out
            }
        }
    }
}

/// One UniPC step at `index`: corrector on the incoming sample (from the second step on), then the
/// predictor to the next sigma (diffusers `UniPCMultistepScheduler.step`, predict_x0, bh2).
fn unipc_step<B: Backend, const D: usize>(
    schedule: &Schedule,
    index: usize,
    state: &mut UniPcState<B, D>,
    model_output: Tensor<B, D>,
    sample: Tensor<B, D>,
) -> Tensor<B, D> {
    let sigmas = &schedule.sigmas;
    let x0 = sample.clone() - model_output * sigmas[index];

    let sample = match state.last_sample.take() {
        Some(last_sample) if index > 0 => {
            unipc_corrector(sigmas, index, &state.x0_predictions, &x0, last_sample, state.last_order)
        }
        _ => sample,
    };

    state.x0_predictions.push(x0);
    if state.x0_predictions.len() > UniPcMultistepScheduler::SOLVER_ORDER {
        state.x0_predictions.remove(0);
    }
    let steps = schedule.timesteps.len();
    // Lower order for the final step and during warm-up.
    let order = UniPcMultistepScheduler::SOLVER_ORDER.min(steps - index).min(state.lower_order_nums + 1);
    state.last_order = order;
    state.last_sample = Some(sample.clone());
    let out = unipc_predictor(sigmas, index, &state.x0_predictions, sample, order);
    if state.lower_order_nums < UniPcMultistepScheduler::SOLVER_ORDER {
        state.lower_order_nums += 1;
    }
    out
}

/// Coefficients shared by predictor and corrector for a step from `sigma_s0` to `sigma_t`.
struct UniPcStep {
    alpha_t: f64,
    /// `sigma_t / sigma_s0`
    sample_scale: f64,
    /// `e^{-h} - 1` (bh2's `B_h` and `h_phi_1` coincide)
    h_phi_1: f64,
    /// `b[0], b[1]` of the order conditions.
    b: [f64; 2],
    h: f64,
}

fn unipc_coefficients(sigma_s0: f64, sigma_t: f64) -> UniPcStep {
    let h = lambda(sigma_t) - lambda(sigma_s0);
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = h_phi_1;
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut b = [0.0; 2];
    for (i, b_i) in b.iter_mut().enumerate() {
        *b_i = h_phi_k * factorial / b_h;
        factorial *= (i + 2) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    UniPcStep { alpha_t: 1.0 - sigma_t, sample_scale: sigma_t / sigma_s0, h_phi_1, b, h }
}

/// UniP (predictor): `x_t = sigma_t/sigma_s0 x - alpha_t h_phi_1 m0 - alpha_t B_h rho D1`.
fn unipc_predictor<B: Backend, const D: usize>(
    sigmas: &[f64],
    index: usize,
    x0_predictions: &[Tensor<B, D>],
    sample: Tensor<B, D>,
    order: usize,
) -> Tensor<B, D> {
    let (sigma_s0, sigma_t) = (sigmas[index], sigmas[index + 1]);
    let c = unipc_coefficients(sigma_s0, sigma_t);
    let m0 = x0_predictions[x0_predictions.len() - 1].clone();
    let mut out = sample * c.sample_scale - m0.clone() * (c.alpha_t * c.h_phi_1);
    if order == 2 && x0_predictions.len() >= 2 && index >= 1 {
        let rk = (lambda(sigmas[index - 1]) - lambda(sigma_s0)) / c.h;
        let d1 = (x0_predictions[x0_predictions.len() - 2].clone() - m0) / rk;
        // rho_p = 0.5 for order 2; B_h = h_phi_1 for bh2.
        out = out - d1 * (c.alpha_t * c.h_phi_1 * 0.5);
    }
    out
}

/// UniC (corrector) of the sample produced by the previous predictor, using the new data
/// prediction `x0` at `sigmas[index]`.
fn unipc_corrector<B: Backend, const D: usize>(
    sigmas: &[f64],
    index: usize,
    x0_predictions: &[Tensor<B, D>],
    x0: &Tensor<B, D>,
    last_sample: Tensor<B, D>,
    order: usize,
) -> Tensor<B, D> {
    let (sigma_s0, sigma_t) = (sigmas[index - 1], sigmas[index]);
    let c = unipc_coefficients(sigma_s0, sigma_t);
    let m0 = x0_predictions[x0_predictions.len() - 1].clone();
    let mut out = last_sample * c.sample_scale - m0.clone() * (c.alpha_t * c.h_phi_1);
    let d1_t = x0.clone() - m0.clone();
    let scale = c.alpha_t * c.h_phi_1;
    if order == 2 && x0_predictions.len() >= 2 && index >= 2 {
        let rk = (lambda(sigmas[index - 2]) - lambda(sigma_s0)) / c.h;
        // Solve [[1, 1], [rk, 1]] rho = b.
        let rho_0 = (c.b[0] - c.b[1]) / (1.0 - rk);
        let rho_1 = c.b[0] - rho_0;
        let d1 = (x0_predictions[x0_predictions.len() - 2].clone() - m0) / rk;
        out = out - (d1 * rho_0 + d1_t * rho_1) * scale;
    } else {
        out = out - d1_t * (0.5 * scale);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TensorSource;
    use crate::test_util::{TestBackend, fixture, max_abs_diff};

    type B = TestBackend;

    fn check(case: &str, make: impl Fn(usize, f64) -> FlowSampler<B, 5>, steps: usize, shift: f64) -> f32 {
        let device = Default::default();
        let path = fixture("schedulers").join(format!("{case}.safetensors"));
        let io = TensorSource::open_files(&[path]).expect("fixture");
        let numbers = |name: &str| -> Vec<f64> {
            io.f64_values(name).expect(name)
        };
        let mut sampler = make(steps, shift);
        let schedule = sampler.schedule().clone();
        let (timesteps, sigmas) = (numbers("timesteps"), numbers("sigmas"));
        assert_eq!(schedule.timesteps.len(), timesteps.len(), "{case} timesteps");
        assert_eq!(schedule.sigmas.len(), sigmas.len(), "{case} sigmas");
        for (a, b) in schedule.timesteps.iter().zip(&timesteps) {
            assert!((a - b).abs() <= 1e-3, "{case}: timestep {a} vs {b}");
        }
        for (a, b) in schedule.sigmas.iter().zip(&sigmas) {
            assert!((a - b).abs() <= 1e-6, "{case}: sigma {a} vs {b}");
        }
        let outputs = io.tensor_of_rank::<B, 6>("model_outputs", &device).expect("outputs");
        let latents = io.tensor_of_rank::<B, 6>("latents", &device).expect("latents");
        let mut x = io.tensor_of_rank::<B, 5>("sample", &device).expect("sample");
        let mut worst = 0f32;
        for k in 0..timesteps.len() {
            let output = outputs.clone().narrow(0, k, 1).squeeze_dim(0);
            x = sampler.step(output, x);
            let expected = latents.clone().narrow(0, k, 1).squeeze_dim(0);
            worst = worst.max(max_abs_diff(x.clone(), expected));
        }
        assert_eq!(sampler.remaining(), 0);
        println!("{case}: max abs error {worst:e}");
        assert!(worst <= 1e-4, "{case}: max abs error {worst}");
        worst
    }

    #[test]
    fn parity_euler() {
        check("euler_6steps_shift3", FlowSampler::euler, 6, 3.0);
        check("euler_1steps_shift1", FlowSampler::euler, 1, 1.0);
    }

    #[test]
    fn parity_heun() {
        check("heun_5steps_shift3", FlowSampler::heun, 5, 3.0);
    }

    #[test]
    fn parity_unipc() {
        check("unipc_8steps_shift3", FlowSampler::unipc, 8, 3.0);
        check("unipc_3steps_shift5", FlowSampler::unipc, 3, 5.0);
    }

    #[test]
    fn shift_one_is_linear() {
        let schedule = FlowMatchEulerDiscreteScheduler::new(1.0).schedule(4);
        assert_eq!(schedule.sigmas.len(), 5);
        assert!((schedule.sigmas[0] - 1.0).abs() < 1e-7);
        assert_eq!(*schedule.sigmas.last().unwrap_or(&1.0), 0.0);
        assert!(schedule.sigmas.windows(2).all(|w| w[0] > w[1]));
    }
}
