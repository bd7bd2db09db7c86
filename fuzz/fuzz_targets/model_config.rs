#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbward_model::fuzzing::config(data));
