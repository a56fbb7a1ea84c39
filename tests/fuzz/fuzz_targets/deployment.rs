//! Coverage-guided fuzzing of a deployment file from parsing to the plan; the properties are in
//! tests/fuzz/check.rs, shared with the bounded stable run in `cargo test`.
#![no_main]

#[path = "../check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
