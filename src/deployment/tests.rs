use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/deployments")
        .join(name)
}

#[test]
fn dump_fixtures() {
    for e in std::fs::read_dir(fixture("")).unwrap() {
        let p = e.unwrap().path();
        match load(&p, None) {
            Ok(d) => eprintln!("OK {}: {d:?}", p.display()),
            Err(e) => eprintln!("{e}"),
        }
    }
}
