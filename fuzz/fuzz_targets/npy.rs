//! NPY files: any bytes give an array or a typed error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = integration_flow::data::parse_npy(data);
});
