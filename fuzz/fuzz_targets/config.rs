//! Training configurations from JSON (`TrainConfig::from_json`): any bytes give a validated
//! config or an error that names the field, never a panic.
#![no_main]
use integration_flow::train::TrainConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = TrainConfig::from_json(json);
    }
});
