//! Median time of one bare training step (forward, squared-error loss, backward, Adam: the
//! crate's `FusedAdam`, burn's arithmetic in one pass per parameter), as the
//! PyTorch reference (`benches/reference/reference.py`) times it: the shared MLP
//! (`benches/common`) or the default `UNetConfig`, on fixed random inputs and targets.
//! `benches/compare.sh` runs the two alternately.
//!
//! ```sh
//! cargo bench --bench step_time -- mlp 512 [--steps 50] [--warmup 5]
//! cargo bench --bench step_time -- unet 64
//! cargo bench --features cuda --bench step_time -- unet 128 --device cuda
//! ```
//!
//! Prints `<model> batch=<b> threads=<t> device=cpu median_ms=<m>` (threads: rayon's pool, set
//! with `RAYON_NUM_THREADS`). The steps run on one of the pool's threads, as the crate's
//! `Trainer` runs them (`backend::on_pool`); `ON_MAIN=1` runs them on the main thread instead.
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use integration_flow::backend::CpuAutodiff;
use integration_flow::nn::{IntegrationNet, UNetConfig};
use integration_flow::train::FusedAdam;
use std::time::Instant;

mod common;
use common::{Mlp, INPUT, OUTPUT};

/// The two networks, behind one forward signature.
trait Net<B: AutodiffBackend>: AutodiffModule<B> {
    fn inputs(&self, batch: usize, device: &B::Device) -> (Vec<Tensor<B, 2>>, Tensor<B, 2>);
    fn run(&self, inputs: &[Tensor<B, 2>]) -> Tensor<B, 2>;
}

impl<B: AutodiffBackend> Net<B> for Mlp<B> {
    fn inputs(&self, batch: usize, device: &B::Device) -> (Vec<Tensor<B, 2>>, Tensor<B, 2>) {
        let normal = Distribution::Normal(0.0, 1.0);
        (
            vec![Tensor::random([batch, INPUT], normal, device)],
            Tensor::random([batch, OUTPUT], normal, device),
        )
    }
    fn run(&self, inputs: &[Tensor<B, 2>]) -> Tensor<B, 2> {
        self.forward(inputs[0].clone())
    }
}

impl<B: AutodiffBackend> Net<B> for integration_flow::nn::UNet<B> {
    fn inputs(&self, batch: usize, device: &B::Device) -> (Vec<Tensor<B, 2>>, Tensor<B, 2>) {
        let normal = Distribution::Normal(0.0, 1.0);
        let dim = self.dim();
        (
            vec![
                Tensor::random([batch, dim], normal, device),
                Tensor::random([batch, 1], Distribution::Uniform(0.0, 1.0), device),
                Tensor::random([batch, dim], normal, device),
            ],
            Tensor::random([batch, dim], normal, device),
        )
    }
    fn run(&self, inputs: &[Tensor<B, 2>]) -> Tensor<B, 2> {
        let batch = inputs[1].dims()[0];
        self.forward(
            inputs[0].clone(),
            inputs[1].clone().reshape([batch]),
            inputs[2].clone(),
        )
    }
}

/// Median milliseconds of `steps` timed steps after `warmup` untimed ones.
fn median_step_ms<B: AutodiffBackend, M: Net<B>>(
    model: M,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: &B::Device,
) -> f64 {
    let (inputs, target) = model.inputs(batch, device);
    // The crate's Adam (the trainer's): burn's arithmetic, fused into one pass per parameter on
    // the CPU backend.
    let mut optim = FusedAdam::new(0.9, 0.999, 1e-8, 0.0).init::<B, M>();
    let mut model = Some(model);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        let m = model
            .take()
            .expect("the model is put back after every step");
        let loss = (m.run(&inputs) - target.clone()).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = optim.step(1e-3, m, grads);
        // Read the loss back so that a lazy backend finishes the step inside the timing.
        std::hint::black_box(loss.into_scalar());
        model = Some(m);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    if times.len() % 2 == 0 {
        (times[mid - 1] + times[mid]) / 2.0
    } else {
        times[mid]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo bench passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage = "usage: step_time mlp|unet BATCH [--steps N] [--warmup N] [--device cpu|cuda]";
    let model = args.first().ok_or(usage)?.clone();
    let batch: usize = args.get(1).ok_or(usage)?.parse()?;
    let flag = |name: &str, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or(usage)?.parse()?),
            None => Ok(default),
        }
    };
    let steps = flag("--steps", 50)?;
    // As the examples do; NO_TUNE=1 measures without it.
    if std::env::var_os("NO_TUNE").is_none() {
        integration_flow::backend::tune_allocator();
    }
    let warmup = flag("--warmup", 5)?;
    if batch == 0 || steps == 0 {
        return Err("BATCH and --steps must be positive".into());
    }
    let device_name = match args.iter().position(|a| a == "--device") {
        Some(i) => args.get(i + 1).ok_or(usage)?.as_str(),
        None => "cpu",
    };
    let ms = match device_name {
        // From the main thread, as the crate's trainer ran its steps before 2026-12-04.
        "cpu" if std::env::var_os("ON_MAIN").is_some() => {
            time_model::<CpuAutodiff>(&model, batch, steps, warmup, Default::default())?
        }
        // On one of rayon's threads, as `Trainer` runs its steps (`backend::on_pool`).
        "cpu" => integration_flow::backend::on_pool(|| {
            time_model::<CpuAutodiff>(&model, batch, steps, warmup, Default::default())
                .map_err(|e| e.to_string())
        })?,
        #[cfg(feature = "cuda")]
        "cuda" if !integration_flow::backend::cuda_driver_available() => {
            return Err("--device cuda: no NVIDIA driver (libcuda.so.1) on this machine".into())
        }
        #[cfg(feature = "cuda")]
        "cuda" => time_model::<integration_flow::backend::CudaAutodiff>(
            &model,
            batch,
            steps,
            warmup,
            Default::default(),
        )?,
        other => {
            return Err(
                format!("unknown device {other:?}: cpu, or cuda with --features cuda").into(),
            )
        }
    };
    println!(
        "{model} batch={batch} threads={} device={device_name} median_ms={ms:.3}",
        rayon::current_num_threads()
    );
    Ok(())
}

/// [`median_step_ms`] of the named model on `device`.
fn time_model<B: AutodiffBackend>(
    model: &str,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: B::Device,
) -> Result<f64, Box<dyn std::error::Error>> {
    Ok(match model {
        "mlp" => {
            B::seed(&device, 0);
            median_step_ms(Mlp::<B>::new(&device), batch, steps, warmup, &device)
        }
        "unet" => {
            let net = UNetConfig::default().init::<B>(&device, 0)?;
            eprintln!("unet parameters: {}", net.num_params());
            median_step_ms(net, batch, steps, warmup, &device)
        }
        other => return Err(format!("unknown model {other:?}").into()),
    })
}
