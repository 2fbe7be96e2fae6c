//! A coupling the crate does not ship, written outside it: the examples sorted along the
//! data's first principal direction are paired in order with N(0, I) anchors sorted along the
//! same direction (optimal transport in one dimension), then frozen.
//!
//! Run: `cargo run --release --example custom_coupling`; prints `coupling=… sw2=<v>` last.
use integration_flow::coupling::{AnchorStore, Coupling, StoreSpec};
use integration_flow::data::{Dataset, Pca};
use integration_flow::metrics::sliced_wasserstein2;
use integration_flow::prelude::*;
use integration_flow::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Arc;

#[derive(Debug)]
struct SortedAlongFirstComponent;

impl Coupling for SortedAlongFirstComponent {
    fn name(&self) -> &str {
        "sorted_pc1"
    }
    fn law(&self, _data: &Dataset) -> Result<AnchorLaw> {
        Ok(AnchorLaw::Gaussian { scale: 1.0 })
    }
    fn build(
        &self,
        data: &Dataset,
        law: &AnchorLaw,
        spec: StoreSpec<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>> {
        let (n, dim) = (data.len(), data.dim());
        let pca = Pca::fit(data, 1)?;
        let draws = law.sample(rng, n, dim)?;
        // Rows of `values` ranked by their first principal coordinate.
        let ranked = |values: &[f32]| -> Result<Vec<usize>> {
            let keys = values
                .chunks(dim)
                .map(|x| Ok(pca.project(x)?[0]))
                .collect::<Result<Vec<f64>>>()?;
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
            Ok(order)
        };
        let mut store = AnchorStore::zeros(n, dim, spec.storage, spec.backing)?;
        for (&i, &j) in ranked(data.values())?.iter().zip(&ranked(&draws)?) {
            store.set(&[i], &draws[j * dim..(j + 1) * dim])?;
        }
        Ok(Some(store))
    }
    fn uses_anchor_term(&self) -> bool {
        false // data term only, as for the optimal-transport couplings
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    integration_flow::backend::tune_allocator();
    let data = Toy::Checkerboard.sample(8192, 0)?;
    let (_, sigma_data) = data.mean_and_std();
    let net = MlpConfig::default().init::<CpuAutodiff>(&Default::default(), 0)?;
    let flow = "rf".parse::<FlowConfig>()?.init()?;
    let model = IntegrationFlowConfig {
        sigma_data: Some(sigma_data),
        ..Default::default()
    }
    .init(flow, net)?;
    let config = TrainConfig::from_json(r#"{"steps": 3000}"#)?;
    let coupling = Arc::new(SortedAlongFirstComponent);
    let mut trainer = Trainer::with_coupling(model, data, config, coupling)?;
    trainer.fit()?;
    let samples = trainer
        .ema_model()
        .generate(&mut StdRng::seed_from_u64(1), 10_000, 1)?;
    let samples: Vec<f32> = samples.into_data().iter::<f32>().collect();
    let reference = Toy::Checkerboard.sample(10_000, 7_777)?;
    let sw2 = sliced_wasserstein2(&samples, reference.values(), 2, 256, 0)?;
    println!("coupling={} sw2={sw2:.4}", trainer.coupling().name());
    Ok(())
}
