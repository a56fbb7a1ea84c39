// What every input must satisfy, from parsing to the plan. Shared by the cargo-fuzz target
// (tests/fuzz/fuzz_targets/deployment.rs) and the bounded stable run in `cargo test`
// (tests/fuzz_deployments.rs), which include this file.

use std::collections::{BTreeMap, BTreeSet};

use gearnat::plan::{self, NetworkConfig, Observed, ObservedInstance, Record};
use gearnat::resolve::{self, Context};
use gearnat::ruleset::{ActualTable, Layout};
use gearnat::state::Reservations;
use gearnat::{commands, deployment, geard};

/// Parses, validates, resolves, plans and renders `data`, checking on the way:
/// - a refused input gets at most 21 message lines, each naming the file and short;
/// - an accepted one resolves (or fails with a resolution error, never a panic), renders, and
///   its plan against an empty kernel is not empty;
/// - the plan against a kernel that already holds it is empty;
/// - geard's output form that apply saves parses back and resolves, with the reservations it
///   came with, to the same instances, host ports and addresses.
pub fn check(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let d = match deployment::parse(source, "fuzz.json", "fuzz") {
        Ok(d) => d,
        Err(e) => return check_message(&e.to_string()),
    };
    let pool = "10.211.0.0/16".parse().unwrap();
    let none = BTreeSet::new();
    let cx = Context {
        reservations: &Reservations::default(),
        listening: &none,
        pool,
    };
    let Ok((resolved, reservations)) = resolve::resolve(&d, &cx) else {
        return;
    };
    let net = NetworkConfig {
        bridge: "gearnat0".into(),
        pool,
    };
    let desired = plan::desired(&resolved, &net);
    let text = commands::compile_text(&desired);
    assert!(text.starts_with("# gearnat compile: deployment fuzz\n"));

    let (instances, created) = (Vec::new(), BTreeSet::new());
    let record = Record {
        instances: &instances,
        created_netns: &created,
    };
    let fresh = plan::diff(&desired, &Observed::default(), &record);
    assert!(!fresh.is_empty(), "nothing to do on an empty kernel");
    let in_sync = plan::diff(&desired, &applied(&desired), &record);
    assert!(
        in_sync.is_empty(),
        "a kernel holding the plan still differs: {in_sync:?}"
    );

    let saved = serde_json::to_string(&geard::output_file(&d, &resolved)).unwrap();
    let again = deployment::parse(&saved, "saved.json", "fuzz")
        .unwrap_or_else(|e| panic!("the saved form does not parse: {e}\n{saved}"));
    let reservations = reservations.map(|c| c.reservations).unwrap_or_default();
    let cx = Context {
        reservations: &reservations,
        ..cx
    };
    let (resolved_again, _) = resolve::resolve(&again, &cx)
        .unwrap_or_else(|e| panic!("the saved form does not resolve: {e}\n{saved}"));
    assert_eq!(
        resolved_again, resolved,
        "the saved form resolves differently"
    );
}

fn check_message(message: &str) {
    let lines: Vec<&str> = message.lines().collect();
    assert!(
        (1..=deployment::MAX_PROBLEMS_SHOWN + 1).contains(&lines.len()),
        "{} lines",
        lines.len()
    );
    for line in lines {
        assert!(line.starts_with("fuzz.json"), "{line}");
        assert!(line.len() < 1000, "a line of {} bytes", line.len());
    }
}

/// The kernel as it is once `d` is applied.
fn applied(d: &plan::Desired) -> Observed {
    let table = |layout: Layout, elements: Vec<_>| ActualTable {
        comment: Some(layout.comment()),
        elements,
        unowned: 0,
    };
    let sysctls = |s: &[plan::Sysctl]| -> BTreeMap<String, String> {
        s.iter().map(|s| (s.key.clone(), s.value.clone())).collect()
    };
    Observed {
        bridge_ready: true,
        host_table: Some(table(d.host_layout, d.host_elements.clone())),
        host_generation: None,
        host_sysctls: sysctls(&d.host_sysctls),
        instances: d
            .instances
            .iter()
            .map(|i| {
                let seen = ObservedInstance {
                    netns_exists: true,
                    wired: true,
                    table: (!i.links.is_empty()).then(|| table(Layout::Instance, i.links.clone())),
                    generation: None,
                    sysctls: sysctls(&i.sysctls),
                    container: None,
                };
                (i.id.clone(), seen)
            })
            .collect(),
    }
}
