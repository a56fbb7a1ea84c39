//! The host's table as gearnat last knew it, kept in the state directory with the ruleset
//! generation it is true at, so that a run finding the generation unchanged does not dump it.
//!
//! nf_tables counts every committed transaction in a namespace, whoever made it, in one
//! generation number (NFT_MSG_GETGEN). While it stays where gearnat left it, the table is
//! exactly what gearnat wrote or last read. Generations restart in every namespace and at every
//! boot, so an entry also names the boot (`/proc/sys/kernel/random/boot_id`) and the namespace
//! by its cookie (SO_NETNS_COOKIE: a 64-bit number never reused within a boot, unlike the
//! namespace's inode number). Any mismatch, or a file that does not parse, means a dump.
//!
//! The file is a cache, not state: it is written without fsync, a lost or torn one costs one
//! dump, and nothing else reads it. At 10,000 mappings reading it takes about a millisecond
//! where the dump took 7 to 14 (each 32 KiB part of a set dump walks the kernel's hash table
//! from its start).

use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::model::Proto;
use crate::report::{push_number, push_socket_addr};
use crate::ruleset::{ActualTable, Element, Owner};

const FILE: &str = "host-table.cache";
const MAGIC: &str = "gearnat host table cache 1";

/// Which namespace, at which generation, a cached table is true for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub boot: String,
    pub netns_cookie: u64,
    pub generation: u32,
}

impl Key {
    /// The key of the calling thread's network namespace at `generation`; `None` where the
    /// kernel cannot tell namespaces apart (no SO_NETNS_COOKIE before Linux 5.14).
    pub fn here(generation: u32) -> Option<Key> {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(Key {
            boot: boot.trim().to_string(),
            netns_cookie: netns_cookie()?,
            generation,
        })
    }
}

/// The cookie of the calling thread's network namespace.
fn netns_cookie() -> Option<u64> {
    // include/uapi/asm-generic/socket.h; the libc crate does not define it.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writing and `len` holds the size of `cookie`;
    // the descriptor is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

/// The host table's cache in one state directory.
#[derive(Debug)]
pub struct TableCache {
    path: PathBuf,
    /// The key of the last entry read or written, so that an entry is not written again.
    current: Mutex<Option<Key>>,
}

impl TableCache {
    pub fn new(state_dir: &Path) -> TableCache {
        TableCache {
            path: state_dir.join(FILE),
            current: Mutex::new(None),
        }
    }

    /// The table (`None`: there is none) when the entry is for `key`.
    pub fn load(&self, key: &Key) -> Option<Option<ActualTable>> {
        let text = fs::read_to_string(&self.path).ok()?;
        let table = parse(&text, key);
        if table.is_some() {
            *self.last() = Some(key.clone());
        } else {
            log::debug!(
                "{}: no entry for generation {}",
                self.path.display(),
                key.generation
            );
        }
        table
    }

    /// Records that the table is `table` at `key`. A failure costs the next run a dump, so it
    /// is logged, not returned.
    pub fn store(&self, key: &Key, table: Option<&ActualTable>) {
        if self.last().as_ref() == Some(key) {
            return;
        }
        let Some(text) = render(key, table) else {
            return self.forget();
        };
        let tmp = self.path.with_extension("tmp");
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| crate::release::replace(&tmp, &self.path));
        match written {
            Ok(()) => *self.last() = Some(key.clone()),
            Err(e) => log::debug!("writing {}: {e}", self.path.display()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<Key>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the entry (after a change whose outcome is not known exactly).
    pub fn forget(&self) {
        *self.last() = None;
        let _ = fs::remove_file(&self.path);
    }
}

/// The file: a header naming the key, the table's comment and unowned count, the owners, then
/// one line per element, owners by number.
fn render(key: &Key, table: Option<&ActualTable>) -> Option<String> {
    let mut out = String::with_capacity(64 + table.map_or(0, |t| t.elements.len() * 40));
    let _ = writeln!(out, "{MAGIC}");
    let _ = writeln!(out, "boot {}", key.boot);
    let _ = writeln!(out, "netns {}", key.netns_cookie);
    let _ = writeln!(out, "generation {}", key.generation);
    let Some(table) = table else {
        out.push_str("absent\n");
        return Some(out);
    };
    // Names and comments written by hand may hold what would break a line; such a table is
    // not cached.
    let plain = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    if table.comment.as_deref().is_some_and(|c| c.contains('\n')) {
        return None;
    }
    let _ = writeln!(out, "comment {}", table.comment.as_deref().unwrap_or(""));
    let _ = writeln!(out, "unowned {}", table.unowned);
    let mut owners: FxHashMap<&Owner, usize> = FxHashMap::default();
    // The elements of one instance come one after another and share its owner's names: the
    // last owner is compared by address before the map is asked.
    let mut last: Option<(&Owner, usize)> = None;
    for element in &table.elements {
        let owner = element.owner();
        let index = match last {
            Some((seen, index)) if same_names(seen, owner) => index,
            _ => {
                let next = owners.len();
                let index = match owners.entry(owner) {
                    Entry::Occupied(known) => *known.get(),
                    Entry::Vacant(new) => {
                        if !plain(&owner.deployment) || !plain(&owner.instance) {
                            return None;
                        }
                        let _ = writeln!(out, "o {} {}", owner.deployment, owner.instance);
                        *new.insert(next)
                    }
                };
                last = Some((owner, index));
                index
            }
        };
        match element {
            Element::Port {
                proto,
                host_port,
                target,
                ..
            } => {
                out.push_str(if *proto == Proto::Tcp {
                    "p tcp "
                } else {
                    "p udp "
                });
                push_number(&mut out, u32::from(*host_port));
                out.push(' ');
                push_socket_addr(&mut out, target);
            }
            Element::Link {
                proto, dial, via, ..
            } => {
                out.push_str(if *proto == Proto::Tcp {
                    "l tcp "
                } else {
                    "l udp "
                });
                push_socket_addr(&mut out, dial);
                out.push(' ');
                push_socket_addr(&mut out, via);
            }
        }
        out.push(' ');
        push_number(&mut out, index as u32);
        out.push('\n');
    }
    let _ = writeln!(out, "end {}", table.elements.len());
    Some(out)
}

/// Whether two owners are the same two shared names (the elements of one instance).
fn same_names(a: &Owner, b: &Owner) -> bool {
    Arc::ptr_eq(&a.deployment, &b.deployment) && Arc::ptr_eq(&a.instance, &b.instance)
}

/// The table in `text` if it is a whole entry for `key`.
fn parse(text: &str, key: &Key) -> Option<Option<ActualTable>> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let header = [
        ("boot", key.boot.clone()),
        ("netns", key.netns_cookie.to_string()),
        ("generation", key.generation.to_string()),
    ];
    for (name, want) in header {
        if lines.next()?.split_once(' ')? != (name, want.as_str()) {
            return None;
        }
    }
    let comment = match lines.next()? {
        "absent" => return lines.next().is_none().then_some(None),
        line => line.strip_prefix("comment ")?,
    };
    let unowned = lines.next()?.strip_prefix("unowned ")?.parse().ok()?;
    let mut table = ActualTable {
        comment: (!comment.is_empty()).then(|| comment.to_string()),
        elements: Vec::new(),
        unowned,
    };
    let mut owners: Vec<Owner> = Vec::new();
    for line in lines {
        let mut words = line.split(' ');
        match words.next()? {
            "o" => {
                let (deployment, instance) = (words.next()?, words.next()?);
                owners.push(Owner::new(deployment, instance));
            }
            kind @ ("p" | "l") => {
                let proto = match words.next()? {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return None,
                };
                let (first, second) = (words.next()?, words.next()?);
                let owner = owners.get(words.next()?.parse::<usize>().ok()?)?.clone();
                table.elements.push(if kind == "p" {
                    Element::Port {
                        proto,
                        host_port: first.parse().ok()?,
                        target: second.parse().ok()?,
                        owner,
                    }
                } else {
                    Element::Link {
                        proto,
                        dial: first.parse::<SocketAddrV4>().ok()?,
                        via: second.parse().ok()?,
                        owner,
                    }
                });
            }
            "end" => {
                let count: usize = words.next()?.parse().ok()?;
                return (count == table.elements.len()).then(|| {
                    table.elements.sort();
                    Some(table)
                });
            }
            _ => return None,
        }
    }
    // No end line: a torn file.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: u32) -> Key {
        Key {
            boot: "b0a7".into(),
            netns_cookie: 4097,
            generation,
        }
    }

    fn table() -> ActualTable {
        let owner = Owner::new("seed", "rockmongo-1");
        let mut elements = vec![
            Element::Port {
                proto: Proto::Tcp,
                host_port: 6060,
                target: "10.211.0.2:80".parse().unwrap(),
                owner: owner.clone(),
            },
            Element::Link {
                proto: Proto::Udp,
                dial: "127.0.0.1:53".parse().unwrap(),
                via: "10.211.0.1:4053".parse().unwrap(),
                owner: Owner::new("seed", "dns-1"),
            },
            Element::Port {
                proto: Proto::Udp,
                host_port: 4000,
                target: "10.211.0.3:27017".parse().unwrap(),
                owner,
            },
        ];
        elements.sort();
        ActualTable {
            comment: Some("gearnat r4 host pool 10.211.0.0/16".into()),
            elements,
            unowned: 2,
        }
    }

    #[test]
    fn an_entry_is_read_back_for_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TableCache::new(dir.path());
        cache.store(&key(7), Some(&table()));
        let fresh = TableCache::new(dir.path());
        assert_eq!(fresh.load(&key(7)), Some(Some(table())));
        assert_eq!(fresh.load(&key(8)), None);
        let other_boot = Key {
            boot: "c1".into(),
            ..key(7)
        };
        assert_eq!(fresh.load(&other_boot), None);
        let other_netns = Key {
            netns_cookie: 4098,
            ..key(7)
        };
        assert_eq!(fresh.load(&other_netns), None);
    }

    #[test]
    fn an_absent_table_and_an_empty_one_differ() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TableCache::new(dir.path());
        cache.store(&key(1), None);
        assert_eq!(TableCache::new(dir.path()).load(&key(1)), Some(None));
        let empty = ActualTable::default();
        cache.store(&key(2), Some(&empty));
        assert_eq!(TableCache::new(dir.path()).load(&key(2)), Some(Some(empty)));
    }

    #[test]
    fn a_torn_or_foreign_file_is_no_entry() {
        let full = render(&key(3), Some(&table())).unwrap();
        for cut in 0..full.len() - 1 {
            assert_eq!(parse(&full[..cut], &key(3)), None, "cut at {cut}");
        }
        assert_eq!(parse(&full.replace("end 3", "end 4"), &key(3)), None);
        assert_eq!(parse(&full.replace(" 1\n", " 9\n"), &key(3)), None);
        assert_eq!(parse("", &key(3)), None);
    }

    #[test]
    fn forget_removes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TableCache::new(dir.path());
        cache.store(&key(5), Some(&table()));
        cache.forget();
        assert_eq!(cache.load(&key(5)), None);
        // Forgotten, the same key is written again.
        cache.store(&key(5), None);
        assert_eq!(cache.load(&key(5)), Some(None));
    }

    #[test]
    fn this_namespace_has_a_key() {
        // SO_NETNS_COOKIE needs Linux 5.14; the test machines run newer kernels.
        let here = Key::here(1).expect("a boot id and a namespace cookie");
        assert_eq!(here.boot.len(), 36);
        assert_ne!(here.netns_cookie, 0);
    }
}
