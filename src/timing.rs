//! Cheap timing of the apply path's steps, logged at debug level (`-vv`) as
//! `took 12.3 ms: STEP`, so that a slow apply shows where its time goes (gearnat-bench reads
//! these lines to split the time between namespace wiring, netlink batches and dumps).

use std::time::Instant;

/// Runs `f` and logs how long it took under `step`.
pub fn timed<T>(step: &str, f: impl FnOnce() -> T) -> T {
    if !log::log_enabled!(log::Level::Debug) {
        return f();
    }
    let started = Instant::now();
    let out = f();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    log::debug!("took {ms:.2} ms: {step}");
    out
}
