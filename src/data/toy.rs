//! Toy 2-D distributions, following FFJORD's `toy_data.py` definitions and scale.

use super::Dataset;
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, SQRT_2};
use std::str::FromStr;

/// The toy 2-D datasets of FFJORD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toy {
    /// `x1 ~ U(−2, 2)`, `x2 = U(0, 1) − 2·Bernoulli(½) + (⌊x1⌋ mod 2)`, point `2·(x1, x2)`.
    Checkerboard,
    /// Eight Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414.
    #[serde(rename = "8gaussians")]
    EightGaussians,
    /// sklearn's two moons (noise 0.1), scaled by 2 and shifted by (−1, −0.2).
    Moons,
    /// Two interleaved spirals (540°), divided by 3, plus N(0, 0.1²) noise.
    #[serde(rename = "2spirals")]
    TwoSpirals,
    /// Five pinwheel arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2.
    Pinwheel,
    /// Four concentric circles (radii 3, 2.25, 1.5, 0.75) with N(0, 0.08²) noise.
    Rings,
    /// sklearn's Swiss roll (noise 1), coordinates (x, z) divided by 5.
    Swissroll,
}

impl Toy {
    /// Every toy dataset.
    pub const ALL: [Toy; 7] = [
        Toy::Checkerboard,
        Toy::EightGaussians,
        Toy::Moons,
        Toy::TwoSpirals,
        Toy::Pinwheel,
        Toy::Rings,
        Toy::Swissroll,
    ];

    /// The name used on command lines and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Toy::Checkerboard => "checkerboard",
            Toy::EightGaussians => "8gaussians",
            Toy::Moons => "moons",
            Toy::TwoSpirals => "2spirals",
            Toy::Pinwheel => "pinwheel",
            Toy::Rings => "rings",
            Toy::Swissroll => "swissroll",
        }
    }

    /// `n` points drawn with `seed`.
    ///
    /// ```
    /// use integration_flow::data::Toy;
    /// let a = Toy::Checkerboard.sample(1000, 7)?;
    /// assert_eq!((a.len(), a.dim()), (1000, 2));
    /// assert_eq!(a, Toy::Checkerboard.sample(1000, 7)?);
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn sample(self, n: usize, seed: u64) -> Result<Dataset> {
        let points = self.points(n, seed)?;
        Dataset::new(coordinates(&points), 2)
    }

    /// Classes of the dataset's natural labels: the Gaussian (8), the moon (2), the spiral
    /// (2), the pinwheel arm (5), the ring (4); 0 for the checkerboard and the Swiss roll,
    /// which have none.
    pub fn classes(self) -> usize {
        match self {
            Toy::EightGaussians => 8,
            Toy::Moons | Toy::TwoSpirals => 2,
            Toy::Pinwheel => 5,
            Toy::Rings => 4,
            Toy::Checkerboard | Toy::Swissroll => 0,
        }
    }

    /// [`sample`](Self::sample) with each point's label ([`classes`](Self::classes)): the
    /// same points, for a class-conditional model. A dataset without labels is an error.
    ///
    /// ```
    /// use integration_flow::data::Toy;
    /// let moons = Toy::Moons.sample_labelled(100, 7)?;
    /// assert_eq!(moons.classes(), 2);
    /// assert_eq!(moons.clone().without_labels(), Toy::Moons.sample(100, 7)?);
    /// assert!(Toy::Checkerboard.sample_labelled(100, 7).is_err());
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn sample_labelled(self, n: usize, seed: u64) -> Result<Dataset> {
        let classes = self.classes();
        if classes == 0 {
            return Err(Error::InvalidArgument {
                name: "dataset",
                reason: format!("the toy dataset {:?} has no labels", self.name()),
            });
        }
        let points = self.points(n, seed)?;
        let labels = points.iter().map(|&(_, label)| label).collect();
        Dataset::new(coordinates(&points), 2)?.with_labels(labels, classes)
    }

    /// `n` points with their labels (0 where the dataset has none).
    fn points(self, n: usize, seed: u64) -> Result<Vec<([f64; 2], usize)>> {
        if n == 0 {
            return Err(Error::InvalidArgument {
                name: "n",
                reason: "a toy dataset needs at least one point".into(),
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let unlabelled = |p: [f64; 2]| (p, 0);
        Ok(match self {
            Toy::Checkerboard => (0..n).map(|_| unlabelled(checkerboard(&mut rng))).collect(),
            Toy::EightGaussians => (0..n).map(|_| eight_gaussians(&mut rng)).collect(),
            Toy::Moons => moons(&mut rng, n),
            Toy::TwoSpirals => two_spirals(&mut rng, n),
            Toy::Pinwheel => pinwheel(&mut rng, n),
            Toy::Rings => rings(&mut rng, n),
            Toy::Swissroll => (0..n).map(|_| unlabelled(swissroll(&mut rng))).collect(),
        })
    }
}

/// The points' coordinates, row-major `f32`.
fn coordinates(points: &[([f64; 2], usize)]) -> Vec<f32> {
    points
        .iter()
        .flat_map(|(p, _)| [p[0] as f32, p[1] as f32])
        .collect()
}

impl FromStr for Toy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Toy::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::InvalidArgument {
                name: "dataset",
                reason: format!(
                    "unknown toy dataset {s:?}; one of {}",
                    Toy::ALL.map(Toy::name).join(", ")
                ),
            })
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

fn checkerboard(rng: &mut StdRng) -> [f64; 2] {
    let x1 = rng.random::<f64>() * 4.0 - 2.0;
    let bernoulli = if rng.random::<bool>() { 1.0 } else { 0.0 };
    let x2 = rng.random::<f64>() - 2.0 * bernoulli + x1.floor().rem_euclid(2.0);
    [2.0 * x1, 2.0 * x2]
}

fn eight_gaussians(rng: &mut StdRng) -> ([f64; 2], usize) {
    let h = 1.0 / SQRT_2;
    let centres = [
        (1.0, 0.0),
        (-1.0, 0.0),
        (0.0, 1.0),
        (0.0, -1.0),
        (h, h),
        (h, -h),
        (-h, h),
        (-h, -h),
    ];
    let mode = rng.random_range(0..8);
    let (cx, cy) = centres[mode];
    let x = 4.0 * cx + 0.5 * normal(rng);
    let y = 4.0 * cy + 0.5 * normal(rng);
    ([x / 1.414, y / 1.414], mode)
}

/// sklearn `make_moons(n, noise=0.1)` (shuffled), then `·2 + (−1, −0.2)`.
fn moons(rng: &mut StdRng, n: usize) -> Vec<([f64; 2], usize)> {
    let n_out = n / 2;
    let n_in = n - n_out;
    let arc = |k: usize, m: usize| {
        if m > 1 {
            PI * k as f64 / (m - 1) as f64
        } else {
            0.0
        }
    };
    let mut points: Vec<([f64; 2], usize)> = (0..n_out)
        .map(|k| ([arc(k, n_out).cos(), arc(k, n_out).sin()], 0))
        .chain((0..n_in).map(|k| {
            (
                [1.0 - arc(k, n_in).cos(), 1.0 - arc(k, n_in).sin() - 0.5],
                1,
            )
        }))
        .collect();
    shuffle(rng, &mut points);
    for (p, _) in &mut points {
        p[0] = 2.0 * (p[0] + 0.1 * normal(rng)) - 1.0;
        p[1] = 2.0 * (p[1] + 0.1 * normal(rng)) - 0.2;
    }
    points
}

fn two_spirals(rng: &mut StdRng, n: usize) -> Vec<([f64; 2], usize)> {
    let mut points: Vec<([f64; 2], usize)> = (0..n)
        .map(|i| {
            let r = rng.random::<f64>().sqrt() * 540.0 * (2.0 * PI) / 360.0;
            let dx = -r.cos() * r + rng.random::<f64>() * 0.5;
            let dy = r.sin() * r + rng.random::<f64>() * 0.5;
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            (
                [
                    sign * dx / 3.0 + 0.1 * normal(rng),
                    sign * dy / 3.0 + 0.1 * normal(rng),
                ],
                i % 2,
            )
        })
        .collect();
    shuffle(rng, &mut points);
    points
}

fn pinwheel(rng: &mut StdRng, n: usize) -> Vec<([f64; 2], usize)> {
    let (radial_std, tangential_std, classes, rate) = (0.3, 0.1, 5, 0.25);
    let mut points: Vec<([f64; 2], usize)> = (0..n)
        .map(|i| {
            let f0 = normal(rng) * radial_std + 1.0;
            let f1 = normal(rng) * tangential_std;
            let angle = 2.0 * PI * (i % classes) as f64 / classes as f64 + rate * f0.exp();
            let (s, c) = angle.sin_cos();
            // einsum("ti,tij->tj") with rotation [[c, −s], [s, c]].
            (
                [2.0 * (f0 * c + f1 * s), 2.0 * (-f0 * s + f1 * c)],
                i % classes,
            )
        })
        .collect();
    shuffle(rng, &mut points);
    points
}

fn rings(rng: &mut StdRng, n: usize) -> Vec<([f64; 2], usize)> {
    let quarter = n / 4;
    let counts = [n - 3 * quarter, quarter, quarter, quarter];
    let radii = [0.25, 0.5, 0.75, 1.0];
    let mut points = Vec::with_capacity(n);
    for (ring, (&count, &radius)) in counts.iter().zip(&radii).enumerate() {
        for k in 0..count {
            let angle = 2.0 * PI * k as f64 / count as f64;
            points.push((
                [3.0 * radius * angle.cos(), 3.0 * radius * angle.sin()],
                ring,
            ));
        }
    }
    shuffle(rng, &mut points);
    for (p, _) in &mut points {
        p[0] += 0.08 * normal(rng);
        p[1] += 0.08 * normal(rng);
    }
    points
}

/// sklearn `make_swiss_roll(noise=1.0)`, keeping (x, z), divided by 5.
fn swissroll(rng: &mut StdRng) -> [f64; 2] {
    let t = 1.5 * PI * (1.0 + 2.0 * rng.random::<f64>());
    let _height = 21.0 * rng.random::<f64>();
    let x = t * t.cos() + normal(rng);
    let z = t * t.sin() + normal(rng);
    [x / 5.0, z / 5.0]
}

fn shuffle<T>(rng: &mut StdRng, points: &mut [T]) {
    for i in (1..points.len()).rev() {
        let j = rng.random_range(0..=i);
        points.swap(i, j);
    }
}
