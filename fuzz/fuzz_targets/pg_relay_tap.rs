#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbward_proxy::fuzzing::pg_relay_tap(data));
