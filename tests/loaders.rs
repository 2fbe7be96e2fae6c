//! Image loaders: the bundled MNIST subset, IDX, NPY, CIFAR-10 and folders, their typed errors,
//! and random-byte property tests showing that the IDX and NPY parsers never panic.

use flate2::{write::GzEncoder, Compression};
use integration_flow::data::{
    mnist, parse_idx, parse_npy, write_npy_f32, Dataset, Images, NpyData, NpyLayout,
};
use integration_flow::Error;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("integration_flow_loaders_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The file a format error names, or a panic with the error.
fn format_error_path(result: Result<Images, Error>) -> (PathBuf, String) {
    match result {
        Err(Error::Format { path, reason }) => (path, reason),
        other => panic!("expected a format error, got {:?}", other.map(|i| i.len())),
    }
}

#[test]
fn the_bundled_mnist_subset_loads_with_labels() {
    let digits = mnist::load(None).unwrap();
    assert_eq!((digits.len(), digits.shape()), (10_000, [1, 28, 28]));
    let labels = digits.labels().unwrap();
    let mut counts = [0usize; 10];
    labels.iter().for_each(|&l| counts[usize::from(l)] += 1);
    assert!(counts.iter().all(|&c| c > 800), "class counts {counts:?}");
    let values = digits.dataset().values();
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    // MNIST is mostly background: about 80% of pixels are exactly 0 (here −1).
    let background = values.iter().filter(|&&v| v == -1.0).count() as f64 / values.len() as f64;
    assert!(
        (0.7..0.9).contains(&background),
        "background fraction {background}"
    );
    assert_eq!(
        digits
            .to_tensor::<integration_flow::backend::Cpu>(&Default::default())
            .dims(),
        [10_000, 1, 28, 28]
    );
    // A folder holding the files and the images file alone load too.
    assert_eq!(
        mnist::load(Some(&mnist::default_dir())).unwrap().len(),
        10_000
    );
    let alone = mnist::load(Some(&mnist::images_path())).unwrap();
    assert!(alone.labels().is_none());
    assert!(matches!(
        mnist::load(Some(Path::new("/nonexistent/mnist"))),
        Err(Error::Io { .. })
    ));
}

#[test]
fn idx_reads_raw_and_gzip_and_names_the_file_on_errors() {
    let dir = temp_dir("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
    let images = idx_bytes(&[2, 3, 4], &pixels);
    let labels = idx_bytes(&[2], &[5, 9]);
    std::fs::write(dir.join("img"), &images).unwrap();
    std::fs::write(dir.join("img.gz"), gzip(&images)).unwrap();
    std::fs::write(dir.join("lab.gz"), gzip(&labels)).unwrap();
    let raw = Images::from_idx(dir.join("img"), Some(dir.join("lab.gz"))).unwrap();
    let gz = Images::from_idx(dir.join("img.gz"), None::<&Path>).unwrap();
    assert_eq!(raw.shape(), [1, 3, 4]);
    assert_eq!(raw.labels(), Some(&[5u8, 9][..]));
    assert_eq!(raw.dataset(), gz.dataset());
    assert_eq!(raw.dataset().row(0)[1], 10.0 / 127.5 - 1.0);

    std::fs::write(dir.join("short"), &images[..images.len() - 1]).unwrap();
    let (path, reason) = format_error_path(Images::from_idx(dir.join("short"), None::<&Path>));
    assert_eq!(path, dir.join("short"));
    assert!(reason.contains("truncated"), "{reason}");

    let mut bad_gzip = gzip(&images);
    let len = bad_gzip.len();
    bad_gzip.truncate(len / 2);
    std::fs::write(dir.join("bad.gz"), bad_gzip).unwrap();
    let (path, reason) = format_error_path(Images::from_idx(dir.join("bad.gz"), None::<&Path>));
    assert_eq!(path, dir.join("bad.gz"));
    assert!(reason.contains("gzip"), "{reason}");

    std::fs::write(dir.join("lab3"), idx_bytes(&[3], &[1, 2, 3])).unwrap();
    let (path, _) = format_error_path(Images::from_idx(dir.join("img"), Some(dir.join("lab3"))));
    assert_eq!(path, dir.join("lab3"));

    // Labels given as images, images as labels: wrong ranks.
    let (path, reason) = format_error_path(Images::from_idx(dir.join("lab.gz"), None::<&Path>));
    assert_eq!(path, dir.join("lab.gz"));
    assert!(reason.contains("[n, h, w]"), "{reason}");

    let mut wrong_type = images.clone();
    wrong_type[2] = 0x0D;
    let err = parse_idx(&wrong_type).unwrap_err().to_string();
    assert!(err.contains("0x0d"), "{err}");
    assert!(parse_idx(&[1, 0, 8, 1, 0, 0, 0, 0]).is_err());
    assert!(parse_idx(&idx_bytes(&[2], &[1, 2, 3]))
        .unwrap_err()
        .to_string()
        .contains("trailing"));
}

#[test]
fn npy_reads_bytes_and_floats_in_either_layout() {
    let dir = temp_dir("npy");
    // float32 in [0, 1], [n, h, w, c] = [2, 2, 3, 3]: pixel (r, c) channel k = (r·3 + c)/10 + k/100.
    let mut values = Vec::new();
    for _ in 0..2 {
        for r in 0..2 {
            for c in 0..3 {
                for k in 0..3 {
                    values.push((r * 3 + c) as f32 / 10.0 + k as f32 / 100.0);
                }
            }
        }
    }
    write_npy_f32(dir.join("nhwc.npy"), &values, &[2, 2, 3, 3]).unwrap();
    let nhwc = Images::from_npy(dir.join("nhwc.npy"), NpyLayout::Nhwc).unwrap();
    assert_eq!(nhwc.shape(), [3, 2, 3]);
    // Channel 1, pixel (1, 2): (5/10 + 1/100) mapped from [0, 1] to [-1, 1].
    let v = nhwc.dataset().row(0)[6 + 5];
    assert!((v - (2.0 * 0.51 - 1.0)).abs() < 1e-6, "{v}");
    // Auto sees sides 2 and 3: channels last.
    let auto = Images::from_npy(dir.join("nhwc.npy"), NpyLayout::Auto).unwrap();
    assert_eq!(auto, nhwc);
    // [1, 3, 2, 3] could be either.
    write_npy_f32(dir.join("either.npy"), &[0.5; 18], &[1, 3, 2, 3]).unwrap();
    let (path, reason) =
        format_error_path(Images::from_npy(dir.join("either.npy"), NpyLayout::Auto));
    assert_eq!(path, dir.join("either.npy"));
    assert!(reason.contains("NpyLayout"), "{reason}");
    // [n, c, h, w] with c = 1 is detected.
    write_npy_f32(dir.join("nchw.npy"), &vec![0.5; 2 * 5 * 6], &[2, 1, 5, 6]).unwrap();
    let nchw = Images::from_npy(dir.join("nchw.npy"), NpyLayout::Auto).unwrap();
    assert_eq!(nchw.shape(), [1, 5, 6]);
    assert_eq!(nchw.dataset().row(0)[0], 0.0);
    // Already in [-1, 1]: kept.
    write_npy_f32(dir.join("signed.npy"), &[-1.0, 0.25, 1.0, 0.0], &[1, 2, 2]).unwrap();
    let signed = Images::from_npy(dir.join("signed.npy"), NpyLayout::Auto).unwrap();
    assert_eq!(signed.dataset().row(0), &[-1.0, 0.25, 1.0, 0.0]);
    // 0–255 floats are refused.
    write_npy_f32(dir.join("big.npy"), &[0.0, 255.0, 3.0, 4.0], &[1, 2, 2]).unwrap();
    let (_, reason) = format_error_path(Images::from_npy(dir.join("big.npy"), NpyLayout::Auto));
    assert!(reason.contains("[0, 1]"), "{reason}");
    // Unsigned bytes, [n, h, w].
    let mut u8_file = npy_header("|u1", "(2, 2, 2)");
    u8_file.extend_from_slice(&[0, 255, 0, 255, 255, 0, 255, 0]);
    std::fs::write(dir.join("u8.npy"), &u8_file).unwrap();
    let bytes = Images::from_npy(dir.join("u8.npy"), NpyLayout::Auto).unwrap();
    assert_eq!(bytes.dataset().row(1), &[1.0, -1.0, 1.0, -1.0]);
    // Truncated, Fortran order, unsupported dtype.
    std::fs::write(dir.join("short.npy"), &u8_file[..u8_file.len() - 3]).unwrap();
    let (path, reason) =
        format_error_path(Images::from_npy(dir.join("short.npy"), NpyLayout::Auto));
    assert_eq!(path, dir.join("short.npy"));
    assert!(reason.contains("truncated"), "{reason}");
    let mut fortran = npy_header_with("|u1", "True", "(1, 1, 1)");
    fortran.push(0);
    assert!(parse_npy(&fortran)
        .unwrap_err()
        .to_string()
        .contains("Fortran"));
    let mut f8 = npy_header(">f8", "(1,)");
    f8.extend_from_slice(&[0; 8]);
    assert!(parse_npy(&f8).unwrap_err().to_string().contains(">f8"));
    let parsed = parse_npy(&u8_file).unwrap();
    assert_eq!(parsed.shape, vec![2, 2, 2]);
    assert!(matches!(parsed.data, NpyData::U8(ref v) if v.len() == 8));
}

fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    npy_header_with(descr, "False", shape)
}

fn npy_header_with(descr: &str, fortran: &str, shape: &str) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

#[test]
fn cifar10_batches_read_planes_and_labels() {
    let dir = temp_dir("cifar");
    let mut batch = Vec::new();
    for label in [3u8, 7] {
        batch.push(label);
        for plane in 0..3u8 {
            batch.extend(std::iter::repeat_n(plane * 100, 1024));
        }
    }
    std::fs::write(dir.join("b1.bin"), &batch).unwrap();
    std::fs::write(dir.join("b2.bin"), &batch[..3073]).unwrap();
    let images = Images::from_cifar10(&[dir.join("b1.bin"), dir.join("b2.bin")]).unwrap();
    assert_eq!((images.len(), images.shape()), (3, [3, 32, 32]));
    assert_eq!(images.labels(), Some(&[3u8, 7, 3][..]));
    let row = images.dataset().row(1);
    assert_eq!(
        (row[0], row[1024], row[2048]),
        (-1.0, 100.0 / 127.5 - 1.0, 200.0 / 127.5 - 1.0)
    );

    std::fs::write(dir.join("short.bin"), &batch[..5000]).unwrap();
    let (path, reason) = format_error_path(Images::from_cifar10(&[dir.join("short.bin")]));
    assert_eq!(path, dir.join("short.bin"));
    assert!(reason.contains("3073"), "{reason}");
    let mut bad_label = batch.clone();
    bad_label[0] = 12;
    std::fs::write(dir.join("label.bin"), &bad_label).unwrap();
    let (_, reason) = format_error_path(Images::from_cifar10(&[dir.join("label.bin")]));
    assert!(reason.contains("label 12"), "{reason}");
    assert!(matches!(
        Images::from_cifar10::<PathBuf>(&[]),
        Err(Error::InvalidArgument { .. })
    ));
    // The same records from memory.
    let parsed = Images::parse_cifar10(&batch, "b1.bin").unwrap();
    assert_eq!(parsed.labels(), Some(&[3u8, 7][..]));
    assert_eq!(parsed.dataset().row(1), images.dataset().row(1));
    let (path, _) = format_error_path(Images::parse_cifar10(&batch[..100], "mem.bin"));
    assert_eq!(path, PathBuf::from("mem.bin"));
}

#[test]
fn folders_of_images_with_and_without_classes() {
    let dir = temp_dir("folder");
    let grey = |v: u8| image::GrayImage::from_pixel(4, 3, image::Luma([v]));
    grey(0).save(dir.join("a.png")).unwrap();
    grey(255).save(dir.join("b.PNG")).unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let flat = Images::from_folder(&dir).unwrap();
    assert_eq!(
        (flat.len(), flat.shape(), flat.labels()),
        (2, [1, 3, 4], None)
    );
    assert_eq!(flat.dataset().row(1)[0], 1.0);

    let classes = temp_dir("classes");
    for (class, v) in [("cat", 10u8), ("dog", 20)] {
        std::fs::create_dir(classes.join(class)).unwrap();
        image::RgbImage::from_pixel(2, 2, image::Rgb([v, 0, 255]))
            .save(classes.join(class).join("x.png"))
            .unwrap();
    }
    let labelled = Images::from_folder(&classes).unwrap();
    assert_eq!(
        (labelled.shape(), labelled.labels()),
        ([3, 2, 2], Some(&[0u8, 1][..]))
    );
    assert_eq!(
        labelled.dataset().row(1)[..5],
        [20.0 / 127.5 - 1.0; 4]
            .iter()
            .chain(&[-1.0])
            .copied()
            .collect::<Vec<_>>()[..]
    );

    // A different size names the file; so does a corrupt PNG.
    image::GrayImage::from_pixel(5, 3, image::Luma([1]))
        .save(dir.join("c.png"))
        .unwrap();
    let (path, reason) = format_error_path(Images::from_folder(&dir));
    assert_eq!(path, dir.join("c.png"));
    assert!(reason.contains("5×3"), "{reason}");
    std::fs::remove_file(dir.join("c.png")).unwrap();
    std::fs::write(dir.join("d.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (path, _) = format_error_path(Images::from_folder(&dir));
    assert_eq!(path, dir.join("d.png"));

    let empty = temp_dir("empty");
    let (path, _) = format_error_path(Images::from_folder(&empty));
    assert_eq!(path, empty);
}

#[test]
fn split_and_take_keep_labels_aligned() {
    let images = Images::new(
        (0..10).map(|i| i as f32 / 10.0).collect(),
        [1, 1, 1],
        Some((0..10).collect()),
    )
    .unwrap();
    let (train, test) = images.split_off(3).unwrap();
    assert_eq!((train.len(), test.len()), (7, 3));
    assert_eq!(test.labels(), Some(&[7u8, 8, 9][..]));
    assert_eq!(test.dataset().row(0), &[0.7]);
    assert_eq!(images.take(2).unwrap().labels(), Some(&[0u8, 1][..]));
    assert_eq!(images.take(20).unwrap().len(), 10);
    assert!(images.take(0).is_err());
    assert!(images.split_off(0).is_err() && images.split_off(10).is_err());
    assert!(Images::new(vec![2.0], [1, 1, 1], None).is_err());
    assert!(Images::new(vec![0.0; 4], [1, 2, 2], Some(vec![1, 2])).is_err());
}

/// Property test: random bytes, every truncation and random corruptions of valid files never
/// make the parsers panic, and a valid file parses to what was written.
#[test]
fn the_idx_and_npy_parsers_never_panic_on_random_bytes() {
    let mut rng = StdRng::seed_from_u64(2024);
    let valid_idx = idx_bytes(&[3, 2, 2], &[7; 12]);
    let mut valid_npy = npy_header("|u1", "(3, 2, 2)");
    valid_npy.extend_from_slice(&[7; 12]);
    let mut f32_npy = npy_header("<f4", "(2, 3)");
    f32_npy.extend(std::iter::repeat_n(1.5f32.to_le_bytes(), 6).flatten());
    assert_eq!(parse_idx(&valid_idx).unwrap().dims, vec![3, 2, 2]);
    assert_eq!(parse_npy(&valid_npy).unwrap().shape, vec![3, 2, 2]);
    for valid in [&valid_idx, &valid_npy, &f32_npy] {
        for cut in 0..valid.len() {
            let _ = parse_idx(&valid[..cut]);
            assert!(parse_npy(&valid[..cut]).is_err() || cut == valid.len());
        }
    }
    let mut parsed = 0;
    for round in 0..20_000 {
        let bytes: Vec<u8> = match round % 3 {
            0 => {
                let len = rng.random_range(0..96);
                (0..len).map(|_| rng.random()).collect()
            }
            1 => {
                let mut b = valid_idx.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            }
            _ => {
                let mut b = if round % 2 == 0 {
                    valid_npy.clone()
                } else {
                    f32_npy.clone()
                };
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            }
        };
        if parse_idx(&bytes).is_ok() {
            parsed += 1;
        }
        if parse_npy(&bytes).is_ok() {
            parsed += 1;
        }
    }
    // Some corruptions only touch data bytes and still parse: the test reaches both outcomes.
    assert!(parsed > 0);
}

/// `Dataset::from_npy` reads NumPy's default float64 as well as float32, `[n, d]` or `[n]`;
/// bytes, 3-D arrays and non-finite values are errors. Tensors and NPY files round-trip.
#[test]
fn datasets_load_from_npy_in_float64_and_float32_and_round_trip() {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_dataset_npy_{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut f64_file = npy_header("<f8", "(3, 2)");
    for v in [0.5f64, -1.25, 2.0, 1e-3, 3.5, -7.0] {
        f64_file.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(dir.join("f64.npy"), &f64_file).unwrap();
    let data = Dataset::from_npy(dir.join("f64.npy")).unwrap();
    assert_eq!((data.len(), data.dim()), (3, 2));
    assert_eq!(data.values(), &[0.5f32, -1.25, 2.0, 1e-3, 3.5, -7.0]);

    // Through a tensor and back, then through an NPY file.
    let tensor = data.to_tensor::<integration_flow::backend::Cpu>(&Default::default());
    assert_eq!(tensor.dims(), [3, 2]);
    let back = Dataset::from_tensor(tensor).unwrap();
    assert_eq!(back, data);
    back.write_npy(dir.join("f32.npy")).unwrap();
    assert_eq!(Dataset::from_npy(dir.join("f32.npy")).unwrap(), data);

    let mut column = npy_header("<f8", "(2,)");
    column.extend_from_slice(&1.0f64.to_le_bytes());
    column.extend_from_slice(&2.0f64.to_le_bytes());
    std::fs::write(dir.join("column.npy"), &column).unwrap();
    assert_eq!(Dataset::from_npy(dir.join("column.npy")).unwrap().dim(), 1);

    let mut bytes = npy_header("|u1", "(2, 2)");
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    std::fs::write(dir.join("bytes.npy"), &bytes).unwrap();
    let mut cube = npy_header("<f8", "(1, 1, 2)");
    cube.extend_from_slice(&[0; 16]);
    std::fs::write(dir.join("cube.npy"), &cube).unwrap();
    let mut nan = npy_header("<f8", "(1, 2)");
    nan.extend_from_slice(&1.0f64.to_le_bytes());
    nan.extend_from_slice(&f64::NAN.to_le_bytes());
    std::fs::write(dir.join("nan.npy"), &nan).unwrap();
    for (name, words) in [
        ("bytes", "bytes"),
        ("cube", "[n, d]"),
        ("nan", "non-finite"),
    ] {
        let err = Dataset::from_npy(dir.join(format!("{name}.npy"))).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{name}: {err}");
        assert!(err.to_string().contains(words), "{name}: {err}");
    }
}
