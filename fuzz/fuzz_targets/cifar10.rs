//! CIFAR-10 binary batches: any bytes give images or a typed error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = integration_flow::data::Images::parse_cifar10(data, "fuzz.bin");
});
