//! The `compare` engine's quick mode, asserted loosely: both the one-step Integration Flow
//! model and the ODE baseline generate, for every flow.
#![cfg(all(feature = "eval", any(feature = "flex", feature = "ndarray")))]

use integration_flow::backend::CpuAutodiff;
use integration_flow::compare::{markdown_table, run_compare, CompareConfig};
use integration_flow::data::Toy;
use integration_flow::pipeline::DistillMethod;

#[test]
fn quick_compare_shows_both_methods_generating() {
    let jobs = std::env::temp_dir().join(format!("if-compare-jobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&jobs);
    let mut config = CompareConfig::quick(Toy::EightGaussians);
    config.job_dir = Some(jobs.clone());
    let output = run_compare::<CpuAutodiff>(&config, |line| println!("{line}")).unwrap();
    let results = &output.results;
    println!("{}", markdown_table(&config, results));
    assert_eq!(results.rows.len(), 4 * 16);
    // The floor: fresh data against the reference is far better than the prior.
    let floor = results.data_sw2[0];
    assert!(
        floor > 0.0 && floor < 0.5 * results.prior_sw2["rf"][0],
        "data SW2 {floor}"
    );
    for flow in ["rf", "vp", "ve", "pfgmpp"] {
        let prior = results.prior_sw2[flow][0];
        let if1 = results.row(flow, "if-anchor-1").unwrap();
        assert_eq!(if1.nfe, 1);
        assert!(
            if1.sw2[0] < 0.5 * prior,
            "{flow}: IF one-step SW2 {} vs prior {prior}",
            if1.sw2[0]
        );
        let dopri = results.row(flow, "baseline-dopri5-1e-5-1e-5").unwrap();
        assert!(
            dopri.sw2[0] < 0.5 * prior,
            "{flow}: DOPRI5 SW2 {} vs prior {prior}",
            dopri.sw2[0]
        );
        assert!(dopri.nfe > 8);
        assert_eq!(results.row(flow, "if-renoise-4").unwrap().nfe, 4);
        let d = &results.diagnostics[flow];
        assert_eq!(d.anchor_convergence[0].len(), 16);
        assert!(d.straightness_if[0].is_finite() && d.straightness_baseline[0].is_finite());
        assert_eq!(results.row(flow, "baseline-heun-8").unwrap().nfe, 15);
        let one_step = &output.samples[&(flow.to_string(), "if-anchor-1".to_string())];
        assert_eq!(one_step.len(), 2 * config.samples);
        assert!(output
            .samples
            .contains_key(&(flow.to_string(), "baseline-dopri5-1e-5-1e-5".to_string())));
    }
    // Every job was saved as it finished; a rerun reads them back and reports the same
    // results without training (a damaged file is run again, not trusted).
    assert_eq!(std::fs::read_dir(&jobs).unwrap().count(), 8);
    std::fs::write(jobs.join("seed0_rf_if.json"), "{ truncated").unwrap();
    let reused = std::sync::Mutex::new(0);
    let again = run_compare::<CpuAutodiff>(&config, |line| {
        if line.ends_with(": reused") {
            *reused.lock().unwrap() += 1;
        }
    })
    .unwrap();
    assert_eq!(*reused.lock().unwrap(), 7);
    let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x == y);
    for (a, b) in again.results.rows.iter().zip(&results.rows) {
        assert_eq!((&a.flow, &a.method, a.nfe), (&b.flow, &b.method, b.nfe));
        assert!(
            same(&a.sw2, &b.sw2) && same(&a.mmd, &b.mmd),
            "{} {}",
            a.flow,
            a.method
        );
    }
    assert_eq!(again.samples, output.samples);
    let _ = std::fs::remove_dir_all(&jobs);
}

#[test]
fn unknown_flow_names_are_refused() {
    let mut config = CompareConfig::quick(Toy::EightGaussians);
    config.flows = vec!["rf".into(), "flowy".into()];
    let err = run_compare::<CpuAutodiff>(&config, |_| {}).unwrap_err();
    assert!(err.to_string().contains("flowy"), "{err}");
}

#[test]
fn the_distilled_student_joins_the_comparison_at_the_same_steps() {
    let jobs = std::env::temp_dir().join(format!("if-compare-distill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&jobs);
    let mut config = CompareConfig::quick(Toy::Checkerboard);
    config.flows = vec!["rf".into()];
    config.distill = true;
    config.job_dir = Some(jobs.clone());
    let results = run_compare::<CpuAutodiff>(&config, |_| {}).unwrap().results;
    for (method, nfe) in [
        ("distill-1", 1),
        ("distill-renoise-2", 2),
        ("distill-renoise-4", 4),
        ("distill-renoise-8", 8),
    ] {
        assert_eq!(results.row("rf", method).unwrap().nfe, nfe, "{method}");
    }
    // The student's one call against the denoiser's (the blurred mean of the data). The
    // default student is the flow map, which at this tiny budget (101 steps after a 165-step
    // teacher, at its small learning rate) is still on its way: 1.19 against 2.07 when written.
    let student = results.row("rf", "distill-1").unwrap().sw2[0];
    let denoiser = results.row("rf", "baseline-euler-1").unwrap().sw2[0];
    assert!(
        student < 0.75 * denoiser,
        "distilled one step {student}, the denoiser's one call {denoiser}"
    );
    // The pairs student, asked for with the same job folder: only its job runs again (the
    // other models' saved jobs do not depend on the student's method), and at this budget it
    // is sharper than the flow map.
    config.distill_method = DistillMethod::GeneratedPairs;
    let lines = std::sync::Mutex::new(Vec::new());
    let again =
        run_compare::<CpuAutodiff>(&config, |line| lines.lock().unwrap().push(line.to_string()))
            .unwrap()
            .results;
    let trained: Vec<String> = lines
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|line| line.contains("trained"))
        .collect();
    assert_eq!(trained.len(), 1, "{trained:?}");
    assert!(trained[0].contains("distilled"), "{trained:?}");
    let pairs = again.row("rf", "distill-1").unwrap().sw2[0];
    assert_eq!(
        again.row("rf", "baseline-euler-1").unwrap().sw2[0],
        denoiser
    );
    assert!(
        pairs < 0.5 * denoiser,
        "pairs student's one step {pairs}, the denoiser's one call {denoiser}"
    );
    // Three saved jobs; the pipeline's own files are gone.
    let names: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    let _ = std::fs::remove_dir_all(&jobs);
}
