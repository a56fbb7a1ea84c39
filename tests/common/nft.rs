//! nft-side helpers: listing tables, loading reference rulesets into scratch namespaces.

use std::io::Write;
use std::process::{Command, Stdio};

/// `nft list table ip gearnat` in namespace `ns` (empty when there is none).
pub fn nft_table(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "ip", "gearnat"])
        .output()
        .expect("running nft");
    String::from_utf8(out.stdout).unwrap()
}

/// Splits `gearnat compile` output into (namespace, nft text) blocks.
pub fn nft_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(ns) = line.strip_prefix("# namespace ") {
            blocks.push((ns.to_string(), String::new()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

/// A namespace of its own for loading a reference ruleset; removed on drop.
pub struct Scratch(String);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let _ = Command::new("ip").args(["netns", "delete", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Scratch(name.to_string())
    }

    /// Loads `text` with `nft -f -` and lists gearnat's table back.
    pub fn load_and_list(&self, text: &str) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f rejected:\n{text}");
        nft_table(&self.0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Deletes the named namespaces on drop (for tests whose instance ids carry no tag).
pub struct NetnsGuard(pub Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}
