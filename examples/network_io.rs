//! Writes a saved model's network inputs and outputs, for checking a port of the network in
//! another framework against the crate (`benches/reference/check_export.py` does this for the
//! PyTorch mirrors):
//!
//! ```sh
//! cargo run --release --example network_io -- --model weights/mnist --out runs/network_io
//! benches/reference/run.sh check weights/mnist runs/network_io
//! ```
//!
//! Draws `--count` inputs from `--seed`: `x` and `anchor` from N(0, 1) `[n, dim]`, `c_noise`
//! uniform in [0, 1) `[n]`, and for a flow-map network `gap` uniform in [0, 1) `[n]`; writes
//! them and the network's output `F(x, c_noise[, gap], anchor)` as float32 NPY files
//! (`x.npy`, `c_noise.npy`, `gap.npy`, `anchor.npy`, `out.npy`) to `--out`, and prints last
//! `count=<n> dim=<d> target_time=<bool>`.
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use integration_flow::backend::Cpu;
use integration_flow::data::write_npy_f32;
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::{FromNetworkConfig, Mlp, NetworkConfig, UNet};
use integration_flow::saved::ModelCard;
use rand::{rngs::StdRng, RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Write a saved model's network inputs and outputs as NPY files")]
struct Args {
    /// The saved model: an export directory or a run's checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Where the NPY files go.
    #[arg(long, default_value = "runs/network_io")]
    out: PathBuf,
    /// Inputs drawn.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let card = ModelCard::read(&args.model)?;
    match card
        .network
        .ok_or("the saved model does not record its network")?
    {
        NetworkConfig::Mlp(_) => write::<Mlp<Cpu>>(args, &args.model),
        NetworkConfig::UNet(_) => write::<UNet<Cpu>>(args, &args.model),
    }
}

fn write<N: FromNetworkConfig<Cpu>>(
    args: &Args,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let device = Default::default();
    let model = IntegrationFlow::<Cpu, N>::load(dir, &device)?;
    let net = model.net();
    let (n, dim) = (args.count, net.dim());
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut normal =
        |len: usize| -> Vec<f32> { (0..len).map(|_| StandardNormal.sample(&mut rng)).collect() };
    let (x, anchor) = (normal(n * dim), normal(n * dim));
    let c_noise: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    let gap: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    let rows =
        |v: &[f32]| Tensor::<Cpu, 2>::from_data(TensorData::new(v.to_vec(), [n, dim]), &device);
    let column = |v: &[f32]| Tensor::<Cpu, 1>::from_data(TensorData::new(v.to_vec(), [n]), &device);
    let out = match net.takes_target_time() {
        true => net.forward_to(rows(&x), column(&c_noise), column(&gap), rows(&anchor)),
        false => net.forward(rows(&x), column(&c_noise), rows(&anchor)),
    };
    let out: Vec<f32> = out.into_data().to_vec::<f32>()?;
    std::fs::create_dir_all(&args.out)?;
    let save = |name: &str, values: &[f32], shape: &[usize]| {
        write_npy_f32(args.out.join(name), values, shape)
    };
    save("x.npy", &x, &[n, dim])?;
    save("anchor.npy", &anchor, &[n, dim])?;
    save("c_noise.npy", &c_noise, &[n])?;
    if net.takes_target_time() {
        save("gap.npy", &gap, &[n])?;
    }
    save("out.npy", &out, &[n, dim])?;
    println!(
        "count={n} dim={dim} target_time={}",
        net.takes_target_time()
    );
    Ok(())
}
