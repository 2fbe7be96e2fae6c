//! Toy datasets follow FFJORD's definitions; the metrics match closed forms.

use integration_flow::data::{Dataset, Toy};
use integration_flow::metrics::{sliced_wasserstein2, wasserstein2_1d};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

#[test]
fn checkerboard_follows_its_definition() {
    let ds = Toy::Checkerboard.sample(20_000, 3).unwrap();
    for p in ds.values().chunks(2) {
        let (x1, x2) = (p[0] / 2.0, p[1] / 2.0);
        assert!((-2.0..2.0).contains(&x1));
        // x2 = U(0,1) − 2·B + (⌊x1⌋ mod 2): the fractional offset lies in [0, 1).
        let offset = x2 - (x1.floor().rem_euclid(2.0));
        let u = if offset >= 0.0 { offset } else { offset + 2.0 };
        assert!((0.0..1.0).contains(&u), "point {p:?}");
    }
    // Black squares only: ⌊x1⌋ + ⌊x2⌋ is even for every point.
    assert!(ds
        .values()
        .chunks(2)
        .all(|p| ((p[0] / 2.0).floor() + (p[1] / 2.0).floor()).rem_euclid(2.0) == 0.0));
}

#[test]
fn eight_gaussians_sit_on_their_centres() {
    let ds = Toy::EightGaussians.sample(40_000, 5).unwrap();
    let mut counts = [0usize; 8];
    for p in ds.values().chunks(2) {
        let (x, y) = (f64::from(p[0]) * 1.414, f64::from(p[1]) * 1.414);
        // Nearest centre on the radius-4 circle, at multiples of 45°.
        let k = ((y.atan2(x) / std::f64::consts::FRAC_PI_4).round() as i64).rem_euclid(8) as usize;
        counts[k] += 1;
    }
    for c in counts {
        assert!((c as f64 / 5000.0 - 1.0).abs() < 0.06, "{counts:?}");
    }
    let (mean, std) = ds.mean_and_std();
    assert!(mean.iter().all(|m| m.abs() < 0.05), "{mean:?}");
    // Per-coordinate variance (8 + 0.25)/1.414² ≈ 4.13.
    assert!(
        (std * std - 8.25 / 1.414f64.powi(2)).abs() < 0.1,
        "std {std}"
    );
}

#[test]
fn every_toy_dataset_is_seeded_and_sized() {
    for toy in Toy::ALL {
        let a = toy.sample(1001, 1).unwrap();
        assert_eq!((a.len(), a.dim()), (1001, 2), "{}", toy.name());
        assert_eq!(a, toy.sample(1001, 1).unwrap());
        assert_ne!(a, toy.sample(1001, 2).unwrap());
        let (_, std) = a.mean_and_std();
        assert!(std > 0.5 && std < 4.0, "{}: std {std}", toy.name());
        assert_eq!(toy.name().parse::<Toy>().unwrap(), toy);
    }
    assert!("circles".parse::<Toy>().is_err());
}

#[test]
fn rings_have_four_radii() {
    let ds = Toy::Rings.sample(8000, 0).unwrap();
    let radii = [0.75, 1.5, 2.25, 3.0];
    for p in ds.values().chunks(2) {
        let r = f64::from(p[0]).hypot(f64::from(p[1]));
        let nearest = radii
            .iter()
            .map(|c| (r - c).abs())
            .fold(f64::INFINITY, f64::min);
        assert!(nearest < 0.5, "radius {r}");
    }
}

#[test]
fn w2_1d_matches_closed_forms() {
    let w = wasserstein2_1d(&mut [0.0, 1.0, 2.0], &mut [0.0, 1.0, 2.0]).unwrap();
    assert_eq!(w, 0.0);
    // A shift by c moves every quantile by c.
    let w = wasserstein2_1d(&mut [3.0, 1.0, 2.0], &mut [1.5, 2.5, 3.5]).unwrap();
    assert!((w - 0.5).abs() < 1e-12);
    // Unequal sizes: {0} against {−1, 1} is 1.
    assert!((wasserstein2_1d(&mut [0.0], &mut [-1.0, 1.0]).unwrap() - 1.0).abs() < 1e-12);
    assert!(wasserstein2_1d(&mut [], &mut [1.0]).is_err());
    assert!(wasserstein2_1d(&mut [f64::NAN], &mut [1.0]).is_err());
}

fn gaussian(n: usize, dim: usize, mean: &[f64], seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    assert_eq!(mean.len(), dim);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        for &m in mean {
            let z: f64 = StandardNormal.sample(&mut rng);
            out.push((m + z) as f32);
        }
    }
    out
}

#[test]
fn sliced_w2_matches_closed_forms() {
    let a = gaussian(20_000, 2, &[0.0, 0.0], 1);
    assert_eq!(sliced_wasserstein2(&a, &a, 2, 50, 0).unwrap(), 0.0);
    // Two Gaussians with means μ apart: SW2² = E_θ[(θ·μ)²] = |μ|²/dim.
    let b = gaussian(20_000, 2, &[3.0, 4.0], 2);
    let sw2 = sliced_wasserstein2(&a, &b, 2, 400, 3).unwrap();
    let expected = 5.0 / 2f64.sqrt();
    assert!(
        (sw2 / expected - 1.0).abs() < 0.03,
        "sw2 {sw2}, closed form {expected}"
    );
    // Bad input is a typed error.
    assert!(sliced_wasserstein2(&a, &b, 3, 10, 0).is_err());
    assert!(sliced_wasserstein2(&a, &[f32::NAN, 0.0], 2, 10, 0).is_err());
    assert!(sliced_wasserstein2(&a, &b, 2, 0, 0).is_err());
}

#[test]
fn dataset_rejects_bad_shapes() {
    assert!(Dataset::new(vec![0.0; 5], 2).is_err());
    assert!(Dataset::new(vec![0.0; 4], 0).is_err());
    let ds = Dataset::new(vec![1.0, 2.0, 3.0, 4.0], 2).unwrap();
    let (mean, std) = ds.mean_and_std();
    assert_eq!(mean, vec![2.0, 3.0]);
    assert!((std - 1.0).abs() < 1e-12);
}

/// erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

#[test]
fn energy_distance_matches_closed_forms() {
    use integration_flow::metrics::energy_distance;
    let a = gaussian(3000, 1, &[0.0], 1);
    assert!(energy_distance(&a, &a, 1).unwrap().abs() < 1e-3);
    // 1-D N(0,1) against N(μ,1): 2·E|Z| − 2·(2/√π), Z ~ N(μ, 2).
    let mu = 1.5f64;
    let b = gaussian(3000, 1, &[mu], 2);
    let s = 2f64.sqrt();
    let phi = |x: f64| 0.5 * (1.0 + erf(x / 2f64.sqrt()));
    let e_abs = s * (2.0 / std::f64::consts::PI).sqrt() * (-mu * mu / (2.0 * s * s)).exp()
        + mu * (1.0 - 2.0 * phi(-mu / s));
    let expected = 2.0 * e_abs - 2.0 * 2.0 / std::f64::consts::PI.sqrt();
    let got = energy_distance(&a, &b, 1).unwrap();
    assert!(
        (got / expected - 1.0).abs() < 0.08,
        "energy {got}, closed form {expected}"
    );
}

#[test]
fn mmd_matches_its_gaussian_closed_form() {
    use integration_flow::metrics::{mmd, MMD_BANDWIDTHS};
    let a = gaussian(2000, 2, &[0.0, 0.0], 3);
    let a2 = gaussian(2000, 2, &[0.0, 0.0], 4);
    assert!(mmd(&a, &a2, 2, &MMD_BANDWIDTHS).unwrap().abs() < 0.01);
    let b = gaussian(2000, 2, &[1.0, 0.5], 5);
    let delta2: f64 = 1.25;
    let expected: f64 = MMD_BANDWIDTHS
        .iter()
        .map(|h| {
            let c = h * h / (h * h + 2.0); // (h²/(h² + 2s²))^{d/2} with s = 1, d = 2
            2.0 * c * (1.0 - (-delta2 / (2.0 * (h * h + 2.0))).exp())
        })
        .sum();
    let got = mmd(&a, &b, 2, &MMD_BANDWIDTHS).unwrap();
    assert!(
        (got / expected - 1.0).abs() < 0.1,
        "mmd {got}, closed form {expected}"
    );
    assert!(mmd(&a, &b, 2, &[]).is_err());
    assert!(mmd(&a, &b, 2, &[-1.0]).is_err());
}

#[test]
fn nearest_neighbour_distance_sees_memorisation() {
    use integration_flow::metrics::nearest_neighbour_distance;
    let train = gaussian(1000, 2, &[0.0, 0.0], 6);
    let fresh = gaussian(1000, 2, &[0.0, 0.0], 7);
    assert_eq!(nearest_neighbour_distance(&train, &train, 2).unwrap(), 0.0);
    let d = nearest_neighbour_distance(&fresh, &train, 2).unwrap();
    // For n uniform-ish points of density ρ, E[NN] ≈ 1/(2√ρ); here about 0.03–0.06.
    assert!(d > 0.01 && d < 0.1, "fresh-to-train NN distance {d}");
    assert!(nearest_neighbour_distance(&fresh, &train, 3).is_err());
}
