//! Every configuration follows burn's conventions: burn's `Config` (save and load), and
//! `ValidatedConfig` (validate, JSON with field paths). Defaults are valid, an unknown field is
//! an error naming it, a saved configuration loads back equal.

use integration_flow::config::{Config, ValidatedConfig};
use integration_flow::coupling::AnchorConfig;
use integration_flow::flow::{
    CheckConfig, FlowConfig, PfgmPPConfig, RectifiedFlowConfig, VeConfig, VpConfig,
};
use integration_flow::metrics::ClassifierConfig;
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::{MlpConfig, UNetConfig};
use integration_flow::train::{EmaConfig, OptimizerConfig, TrainConfig};
use integration_flow::Error;

fn conventions<C: ValidatedConfig + Default + PartialEq>(bad_field_json: &str, field: &str) {
    let name = C::NAME;
    let default = C::default();
    ValidatedConfig::validate(&default).unwrap_or_else(|e| panic!("{name}: default invalid: {e}"));
    assert!(
        C::from_json("{}").unwrap() == default,
        "{name}: {{}} is not the default"
    );
    match C::from_json(r#"{"no_such_field": 1}"#) {
        Err(Error::ConfigJson { field, .. }) => assert!(!field.is_empty(), "{name}"),
        Err(other) => panic!("{name}: expected a JSON error, got {other}"),
        Ok(_) => panic!("{name}: an unknown field was accepted"),
    }
    let e = C::from_json(bad_field_json)
        .err()
        .unwrap_or_else(|| panic!("{name}: {bad_field_json} was accepted"));
    assert!(
        e.to_string().contains(field),
        "{name}: {e} does not name {field}"
    );
    // burn's save and load.
    let path = std::env::temp_dir().join(format!(
        "integration_flow_config_{name}_{}.json",
        std::process::id()
    ));
    default.save(&path).unwrap();
    assert!(
        C::load(&path).unwrap() == default,
        "{name}: burn's load differs"
    );
    assert!(
        C::from_json_file(&path).unwrap() == default,
        "{name}: from_json_file differs"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn every_configuration_follows_the_conventions() {
    conventions::<TrainConfig>(r#"{"batch_size": 0}"#, "batch_size");
    conventions::<AnchorConfig>(r#"{"scale": -1}"#, "anchor.scale");
    conventions::<OptimizerConfig>(r#"{"lr": 0}"#, "optimizer.lr");
    conventions::<EmaConfig>(r#"{"decay": 1.5}"#, "ema.decay");
    conventions::<VpConfig>(r#"{"beta_max": -1}"#, "beta");
    conventions::<VeConfig>(r#"{"sigma_max": 0.0001}"#, "sigma_max");
    conventions::<RectifiedFlowConfig>(r#"{"t_min": 2}"#, "t_m");
    conventions::<PfgmPPConfig>(r#"{"d": 1}"#, "`d`");
    conventions::<CheckConfig>(r#"{"dim": 0}"#, "dim");
    conventions::<MlpConfig>(r#"{"width": 0}"#, "width");
    conventions::<UNetConfig>(r#"{"channels": 0}"#, "channels");
    conventions::<ClassifierConfig>(r#"{"epochs": 0}"#, "epochs");
    conventions::<IntegrationFlowConfig>(r#"{"sigma_data": 0}"#, "sigma_data");
}

#[test]
fn the_flow_registry_follows_the_conventions_too() {
    let ve = FlowConfig::Ve(VeConfig::default());
    ValidatedConfig::validate(&ve).unwrap();
    let path = std::env::temp_dir().join(format!(
        "integration_flow_config_flow_{}.json",
        std::process::id()
    ));
    ve.save(&path).unwrap();
    assert_eq!(FlowConfig::load(&path).unwrap(), ve);
    assert_eq!(
        <FlowConfig as ValidatedConfig>::from_json_file(&path).unwrap(),
        ve
    );
    let _ = std::fs::remove_file(&path);
    let e = <FlowConfig as ValidatedConfig>::from_json(r#"{"kind": "ve", "sigma_max": 0}"#)
        .unwrap_err();
    assert!(e.to_string().contains("sigma_max"), "{e}");
}
