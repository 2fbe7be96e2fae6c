//! The checkpoint reader: any bytes give a verified summary or `Error::Checkpoint`, never a
//! panic. Seed the corpus with a real checkpoint (docs/reliability.md).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = integration_flow::train::CheckpointInfo::parse(data, "checkpoint.ifc");
});
