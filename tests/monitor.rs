//! nf_tables change notifications, as `gearnat watch` reads them: deletions in gearnat's table
//! by another process are reported, deletions elsewhere and gearnat's own are not. Runs in a
//! network namespace of its own.

use std::process::Command;
use std::time::Duration;

use gearnat::netfilter::{self, Monitor, Removal};
use gearnat::netns;
use gearnat::ruleset::{Layout, TableChange};

/// Everything the monitor reports until it has been quiet for a moment.
fn drain(m: &mut Monitor) -> Vec<Removal> {
    let mut all = Vec::new();
    loop {
        let got = m.next(Duration::from_millis(300)).unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

fn nft(args: &str) {
    let out = Command::new("nft").arg(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

#[test]
fn others_deletions_in_gearnats_table_are_reported() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let name = format!("gnmon-{}", std::process::id());
    let _ = netns::delete_named(&name);
    let ns = Namespace(name.clone());
    let handle = netns::create_named(&ns.0).unwrap();
    netns::run_in(&handle, || {
        let mut m = Monitor::open().unwrap();

        // Another process (nft) adds and deletes gearnat's table: the deletion is reported,
        // with the process's name.
        nft("add table ip gearnat");
        nft("add chain ip gearnat c");
        nft("delete chain ip gearnat c");
        nft("delete table ip gearnat");
        let seen = drain(&mut m);
        let whats: Vec<&str> = seen.iter().map(|r| r.what).collect();
        assert_eq!(whats, ["chain", "table"], "{seen:?}");
        assert!(
            seen.iter().all(|r| r.by.as_deref() == Some("nft")),
            "{seen:?}"
        );

        // Another table's deletion, or one in another family, is none of gearnat's business.
        nft("add table ip other");
        nft("delete table ip other");
        nft("add table inet gearnat");
        nft("delete table inet gearnat");
        assert_eq!(drain(&mut m), []);

        // gearnat's own changes (this thread is a `gearnat-netns` thread) are intended.
        let pool = "10.213.0.0/16".parse().unwrap();
        let create = TableChange {
            create: Some(Layout::Host { pool }),
            ..TableChange::default()
        };
        netfilter::commit(&create).unwrap();
        let delete = TableChange {
            delete_table: true,
            ..TableChange::default()
        };
        netfilter::commit(&delete).unwrap();
        assert_eq!(drain(&mut m), []);
    })
    .unwrap();
}
