//! Memory of the anchor store as the dataset grows: trains the default MLP on `--points` 2-D
//! checkerboard points for one epoch with the anchor store in RAM or in a memory-mapped file,
//! checkpoints, and prints the process's memory from `/proc/self/status` (Linux). One
//! configuration per process, because peak RSS is process-wide.
//!
//! ```sh
//! cargo bench --bench anchor_memory -- --points 1000000 --backing file --storage f32
//!     [--policy prediction|ot|frozen] [--steps N] [--dir target/anchor-memory]
//! ```
//!
//! Policy `prediction` (the default here) writes every anchor it reads back into the store,
//! so one epoch touches every anchor twice without the O(chunk²) optimal-transport matching,
//! whose memory does not grow with the dataset. Prints
//! `points=<n> backing=<b> storage=<s> store_bytes=<n> bytes_per_value=<w>
//! peak_rss_mb=<VmHWM> rss_anon_mb=<RssAnon> rss_file_mb=<RssFile> anon_peak_mb=<max sampled>`
//! last.
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Toy;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::MlpConfig;
use integration_flow::train::{AnchorBacking, AnchorPolicy, AnchorStorage, TrainConfig, Trainer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

/// A field of `/proc/self/status` in MiB (`None` off Linux).
fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<(), Error> {
    integration_flow::backend::tune_allocator();
    let mut points = 10_000usize;
    let mut backing = "memory".to_string();
    let mut storage = "f32".to_string();
    let mut policy = "prediction".to_string();
    let mut steps = None;
    let mut dir = PathBuf::from("target/anchor-memory");
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--points" => points = value.parse()?,
            "--backing" => backing = value,
            "--storage" => storage = value,
            "--policy" => policy = value,
            "--steps" => steps = Some(value.parse()?),
            "--dir" => dir = value.into(),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    std::fs::create_dir_all(&dir)?;
    let mut config = TrainConfig {
        progress: false,
        ..Default::default()
    };
    config.steps = steps.unwrap_or(points.div_ceil(config.batch_size));
    config.anchor.policy = match policy.as_str() {
        "prediction" => AnchorPolicy::Prediction,
        "ot" => AnchorPolicy::Ot,
        "frozen" => AnchorPolicy::Frozen,
        other => return Err(format!("unknown policy {other:?}").into()),
    };
    config.anchor.storage = match storage.as_str() {
        "f32" => AnchorStorage::F32,
        "f16" => AnchorStorage::F16,
        other => return Err(format!("unknown storage {other:?}").into()),
    };
    config.anchor.backing = match backing.as_str() {
        "memory" => AnchorBacking::Memory,
        "file" => AnchorBacking::File {
            path: dir.join(format!("anchors_{points}_{storage}.bin")),
        },
        other => return Err(format!("unknown backing {other:?}").into()),
    };
    let base = status_mb("RssAnon:").unwrap_or(f64::NAN);
    let data = Toy::Checkerboard.sample(points, 0)?;
    let (_, sigma_data) = data.mean_and_std();
    let net = MlpConfig::default().init::<CpuAutodiff>(&Default::default(), 0)?;
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(sigma_data),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(RectifiedFlowConfig::default().init()?), net)?;
    let started = Instant::now();
    let mut trainer = Trainer::new(model, data, config)?
        .with_checkpoint_dir(dir.join(format!("ckpt_{points}_{backing}_{storage}")));
    let store_bytes = trainer.anchors().map_or(0, |s| s.bytes());
    let mut anon_peak = status_mb("RssAnon:").unwrap_or(f64::NAN);
    while trainer.step() < trainer.config().steps {
        let remaining = trainer.config().steps - trainer.step();
        trainer.train_steps(remaining.min(50))?;
        anon_peak = anon_peak.max(status_mb("RssAnon:").unwrap_or(f64::NAN));
    }
    trainer.checkpoint()?;
    anon_peak = anon_peak.max(status_mb("RssAnon:").unwrap_or(f64::NAN));
    let values = points * 2;
    eprintln!(
        "{} steps in {:.1} s; anon RSS at start {base:.1} MiB",
        trainer.step(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "points={points} backing={backing} storage={storage} store_bytes={store_bytes} \
         bytes_per_value={:.2} peak_rss_mb={:.1} rss_anon_mb={:.1} rss_file_mb={:.1} \
         anon_peak_mb={anon_peak:.1}",
        store_bytes as f64 / values as f64,
        status_mb("VmHWM:").unwrap_or(f64::NAN),
        status_mb("RssAnon:").unwrap_or(f64::NAN),
        status_mb("RssFile:").unwrap_or(f64::NAN),
    );
    Ok(())
}
