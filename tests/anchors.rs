//! The anchor store: storage types, indexing, initialisations.

use integration_flow::data::{Pca, Toy};
use integration_flow::train::{AnchorStorage, AnchorStore, OtSpace};
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn f32_and_f16_stores_read_what_was_written() {
    for storage in [AnchorStorage::F32, AnchorStorage::F16] {
        let mut store =
            AnchorStore::gaussian(100, 3, 2.0, storage, &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(
            (store.len(), store.dim(), store.storage()),
            (100, 3, storage)
        );
        let bytes_per_value = match storage {
            AnchorStorage::F32 => 4,
            AnchorStorage::F16 => 2,
        };
        assert_eq!(store.bytes(), 300 * bytes_per_value);
        store
            .set(&[7, 42], &[0.5, -1.25, 3.0, 1.0, 2.0, -0.125])
            .unwrap();
        assert_eq!(
            store.get(&[42, 7]).unwrap(),
            vec![1.0, 2.0, -0.125, 0.5, -1.25, 3.0]
        );
        // f16 keeps about three significant digits.
        store.set(&[0], &[1.2345, -100.07, 0.001]).unwrap();
        let back = store.get(&[0]).unwrap();
        for (a, b) in back.iter().zip([1.2345f32, -100.07, 0.001]) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(store.get(&[100]).is_err());
        assert!(store.set(&[1], &[0.0]).is_err());
    }
}

#[test]
fn gaussian_anchors_have_the_configured_scale() {
    let store = AnchorStore::gaussian(
        20_000,
        2,
        3.0,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let all = store.get(&(0..20_000).collect::<Vec<_>>()).unwrap();
    let var = all.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / all.len() as f64;
    assert!((var.sqrt() - 3.0).abs() < 0.05, "std {}", var.sqrt());
    assert!(AnchorStore::gaussian(
        10,
        2,
        0.0,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(1)
    )
    .is_err());
    assert!(
        AnchorStore::gaussian(0, 2, 1.0, AnchorStorage::F32, &mut StdRng::seed_from_u64(1))
            .is_err()
    );
}

/// Within a chunk the assignment is optimal: no swap of two anchors lowers the total cost.
#[test]
fn optimal_transport_assignment_has_no_improving_swap() {
    let data = Toy::Moons.sample(64, 0).unwrap();
    let store = AnchorStore::optimal_transport(
        &data,
        1.0,
        64,
        OtSpace::Data,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(2),
    )
    .unwrap();
    let anchors = store.get(&(0..64).collect::<Vec<_>>()).unwrap();
    let cost = |i: usize, j: usize| -> f64 {
        let (x, a) = (data.row(i), &anchors[j * 2..j * 2 + 2]);
        f64::from(x[0] - a[0]).powi(2) + f64::from(x[1] - a[1]).powi(2)
    };
    for i in 0..64 {
        for j in 0..64 {
            let swapped = cost(i, j) + cost(j, i);
            assert!(
                swapped >= cost(i, i) + cost(j, j) - 1e-9,
                "swapping {i} and {j} lowers the cost"
            );
        }
    }
    assert!(AnchorStore::optimal_transport(
        &data,
        1.0,
        0,
        OtSpace::Data,
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(2)
    )
    .is_err());
}

/// Matching in the space of all principal directions is matching in the data space; on one
/// direction it is the 1-D optimal transport, which pairs the sorted projections in order.
#[test]
fn optimal_transport_in_pca_space() {
    let data = Toy::Moons.sample(128, 0).unwrap();
    let ot = |space| {
        AnchorStore::optimal_transport(
            &data,
            1.0,
            128,
            space,
            AnchorStorage::F32,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap()
        .get(&(0..128).collect::<Vec<_>>())
        .unwrap()
    };
    let full = ot(OtSpace::Data);
    let all_dims = ot(OtSpace::Pca { dims: 2 });
    assert_eq!(full, all_dims);
    let one = ot(OtSpace::Pca { dims: 1 });
    assert_ne!(full, one);
    let pca = Pca::fit(&data, 1).unwrap();
    let x: Vec<f64> = (0..128)
        .map(|i| pca.project(data.row(i)).unwrap()[0])
        .collect();
    let a: Vec<f64> = one.chunks(2).map(|r| pca.project(r).unwrap()[0]).collect();
    for i in 0..128 {
        for j in 0..128 {
            assert!(
                (x[i] - x[j]) * (a[i] - a[j]) >= -1e-9,
                "examples {i} and {j} are paired out of order"
            );
        }
    }
    assert!(AnchorStore::optimal_transport(
        &data,
        1.0,
        128,
        OtSpace::Pca { dims: 3 },
        AnchorStorage::F32,
        &mut StdRng::seed_from_u64(3)
    )
    .is_err());
}

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("integration_flow_anchor_files");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A memory-mapped store behaves like the in-memory one: same draws, same reads and writes,
/// its values in the file, and clones that live in memory.
#[test]
fn file_backed_stores_match_in_memory_ones() {
    use integration_flow::train::AnchorBacking;
    let data = Toy::Checkerboard.sample(1000, 3).unwrap();
    for storage in [AnchorStorage::F32, AnchorStorage::F16] {
        let path = temp_file(&format!("store_{storage:?}.bin"));
        let file = AnchorBacking::File { path: path.clone() };
        let memory =
            AnchorStore::gaussian(500, 3, 1.5, storage, &mut StdRng::seed_from_u64(9)).unwrap();
        let mut mapped =
            AnchorStore::gaussian_in(500, 3, 1.5, storage, &file, &mut StdRng::seed_from_u64(9))
                .unwrap();
        assert_eq!(mapped, memory);
        assert_eq!(mapped.file(), Some(path.as_path()));
        assert_eq!(memory.file(), None);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            mapped.bytes()
        );
        mapped.set(&[3], &[1.0, -2.0, 0.5]).unwrap();
        assert_eq!(mapped.get(&[3]).unwrap(), vec![1.0, -2.0, 0.5]);
        assert!(mapped.get(&[500]).is_err() && mapped.set(&[0], &[1.0]).is_err());
        let copy = mapped.clone();
        assert_eq!(copy.file(), None);
        assert_eq!(copy, mapped);
        // The values are in the file, little-endian.
        let raw = std::fs::read(&path).unwrap();
        let w = storage.width();
        let third = &raw[3 * 3 * w..3 * 3 * w + w];
        let value = match storage {
            AnchorStorage::F32 => f32::from_le_bytes(third.try_into().unwrap()),
            AnchorStorage::F16 => half::f16::from_le_bytes(third.try_into().unwrap()).to_f32(),
        };
        assert_eq!(value, 1.0);

        let ot = |backing: &AnchorBacking| {
            AnchorStore::optimal_transport_in(
                &data,
                1.0,
                256,
                OtSpace::Data,
                storage,
                backing,
                &mut StdRng::seed_from_u64(4),
            )
            .unwrap()
        };
        let in_file = ot(&AnchorBacking::File {
            path: temp_file(&format!("ot_{storage:?}.bin")),
        });
        assert_eq!(in_file, ot(&AnchorBacking::Memory));
        let back = in_file.into_backing(&AnchorBacking::Memory).unwrap();
        assert_eq!(back.file(), None);
        assert_eq!(back, ot(&AnchorBacking::Memory));
    }
    // A file that cannot be created is an I/O error naming it.
    let bad = AnchorBacking::File {
        path: "/nonexistent/dir/anchors.bin".into(),
    };
    match AnchorStore::zeros(10, 2, AnchorStorage::F32, &bad) {
        Err(integration_flow::Error::Io { path, .. }) => {
            assert_eq!(path, std::path::Path::new("/nonexistent/dir/anchors.bin"))
        }
        other => panic!("expected an I/O error, got {:?}", other.map(|s| s.len())),
    }
}

/// Data spread along two known directions of a 5-D space: the subspace law finds their
/// scales, codes invert sketches, and OT-matched sketches sit closer to their examples than
/// random ones.
#[test]
fn subspace_law_fits_the_principal_directions_and_matches_by_code() {
    use integration_flow::coupling::SubspaceLaw;
    use integration_flow::data::Dataset;
    use integration_flow::train::AnchorBacking;
    use rand::RngExt;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = StdRng::seed_from_u64(11);
    let mean = [1.0f32, -2.0, 0.5, 0.0, 3.0];
    let (e1, e2) = ([0.6f32, 0.8, 0.0, 0.0, 0.0], [0.0f32, 0.0, 0.0, 1.0, 0.0]);
    let n = 4000;
    let mut values = Vec::with_capacity(n * 5);
    for _ in 0..n {
        let a: f32 = StandardNormal.sample(&mut rng);
        let b: f32 = StandardNormal.sample(&mut rng);
        for d in 0..5 {
            let jitter = rng.random_range(-0.01f32..0.01);
            values.push(mean[d] + 3.0 * a * e1[d] + 0.5 * b * e2[d] + jitter);
        }
    }
    let data = Dataset::new(values, 5).unwrap();
    let law = SubspaceLaw::fit(&data, 2).unwrap();
    assert_eq!((law.dims(), law.dim()), (2, 5));
    // The code of a sketch is its z; the sketch of z = 0 is the mean.
    let z = [0.7, -1.3];
    let back = law.code(&law.compose(&z).unwrap()).unwrap();
    assert!(
        (back[0] - z[0]).abs() < 1e-4 && (back[1] - z[1]).abs() < 1e-4,
        "{back:?}"
    );
    let centre = law.compose(&[0.0, 0.0]).unwrap();
    for (c, m) in centre.iter().zip(mean) {
        assert!((c - m).abs() < 0.15, "{centre:?}");
    }
    // Along e1 the sketch moves 3 units per unit of z (the fitted scale), along e2 0.5.
    let step1 = law.compose(&[1.0, 0.0]).unwrap();
    let moved: f32 = step1
        .iter()
        .zip(&centre)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        .sqrt();
    assert!((moved - 3.0).abs() < 0.15, "{moved}");
    // Matched sketches lie near their examples; a second, unmatched draw does not.
    let store = AnchorStore::optimal_transport_subspace(
        &data,
        &law,
        1000,
        AnchorStorage::F32,
        &AnchorBacking::Memory,
        &mut StdRng::seed_from_u64(5),
    )
    .unwrap();
    let mut matched = 0.0;
    let mut unmatched = 0.0;
    for i in 0..n {
        let a = store.get(&[i]).unwrap();
        let other = law.compose(&law.draw(&mut rng)).unwrap();
        let d = |x: &[f32]| -> f64 {
            x.iter()
                .zip(data.row(i))
                .map(|(p, q)| f64::from(p - q).powi(2))
                .sum()
        };
        matched += d(&a);
        unmatched += d(&other);
    }
    assert!(
        matched < 0.1 * unmatched,
        "matched {matched}, unmatched {unmatched}"
    );
    let wrong = SubspaceLaw::fit(&Toy::Moons.sample(100, 0).unwrap(), 1).unwrap();
    assert!(AnchorStore::optimal_transport_subspace(
        &data,
        &wrong,
        100,
        AnchorStorage::F32,
        &AnchorBacking::Memory,
        &mut rng
    )
    .is_err());
}
