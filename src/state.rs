//! The state directory: what the kernel cannot hold.
//!
//! Host-port and address reservations (so they survive re-applies, restarts and reboots), one
//! record per applied deployment, and the lock that serializes gearnat runs. Every file is
//! written atomically (temporary file, fsync, rename), so a crash leaves the old or the new
//! version, never a torn one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::model::Proto;

/// Where gearnat keeps its state unless `--state-dir` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/gearnat";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("creating state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt ({source}); move it away to start afresh, or restore it")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A host port held by one instance's public port. The names are shared by every port of the
/// instance: 10,000 reservations then read, copy and free two names per instance, not per port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortHolder {
    pub deployment: Arc<str>,
    pub instance: Arc<str>,
    pub internal: u16,
}

/// An instance's address in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressHolder {
    pub deployment: String,
    pub address: Ipv4Addr,
}

/// A host port of one protocol, the key of a port reservation; written `tcp/6060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a host port such as \"tcp/6060\"");
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let proto = Proto::ALL
            .into_iter()
            .find(|p| p.as_str() == proto)
            .ok_or_else(bad)?;
        Ok(HostPort {
            proto,
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = HostPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a host port such as \"tcp/6060\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HostPort, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Every reservation of every deployment (`reservations.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "ReservationsFile")]
pub struct Reservations {
    pub ports: BTreeMap<HostPort, PortHolder>,
    /// Key: instance id (unique on the host: it names the instance's network namespace).
    pub addresses: BTreeMap<String, AddressHolder>,
}

/// One instance's host ports of one protocol, as `[host port, container port]` pairs.
type HeldPorts = BTreeMap<Proto, Vec<(u16, u16)>>;

/// `reservations.json` on disk. Host ports are grouped by deployment and instance, so 10,000
/// of them are 10,000 pairs of numbers rather than 10,000 objects that repeat the names:
/// `{"held_ports": {"web": {"web-1": {"tcp": [[6060, 80]]}}}, "addresses": {...}}`.
/// `ports` is how files written before that grouping hold them (`{"tcp/6060": {"deployment":
/// "web", "instance": "web-1", "internal": 80}}`); they are read as they are and written
/// grouped.
#[derive(Deserialize)]
struct ReservationsFile {
    #[serde(default)]
    held_ports: BTreeMap<String, BTreeMap<String, HeldPorts>>,
    #[serde(default)]
    ports: BTreeMap<HostPort, PortHolder>,
    #[serde(default)]
    addresses: BTreeMap<String, AddressHolder>,
}

impl From<ReservationsFile> for Reservations {
    fn from(file: ReservationsFile) -> Reservations {
        let mut ports = file.ports;
        for (deployment, instances) in file.held_ports {
            let deployment: Arc<str> = deployment.into();
            for (instance, held) in instances {
                let instance: Arc<str> = instance.into();
                for (proto, pairs) in held {
                    for (port, internal) in pairs {
                        let holder = PortHolder {
                            deployment: Arc::clone(&deployment),
                            instance: Arc::clone(&instance),
                            internal,
                        };
                        ports.insert(HostPort { proto, port }, holder);
                    }
                }
            }
        }
        Reservations {
            ports,
            addresses: file.addresses,
        }
    }
}

impl Serialize for Reservations {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut held: BTreeMap<&str, BTreeMap<&str, HeldPorts>> = BTreeMap::new();
        for (at, h) in &self.ports {
            (held.entry(&h.deployment).or_default())
                .entry(&h.instance)
                .or_default()
                .entry(at.proto)
                .or_default()
                .push((at.port, h.internal));
        }
        let mut file = serializer.serialize_struct("Reservations", 2)?;
        file.serialize_field("held_ports", &held)?;
        file.serialize_field("addresses", &self.addresses)?;
        file.end()
    }
}

impl Reservations {
    pub fn port_holder(&self, proto: Proto, port: u16) -> Option<&PortHolder> {
        self.ports.get(&HostPort { proto, port })
    }

    /// Whether every reservation here is one `other` holds too: `self` only gives back.
    #[cfg(test)]
    pub fn within(&self, other: &Reservations) -> bool {
        self.ports.len() <= other.ports.len()
            && self.addresses.len() <= other.addresses.len()
            && (self.ports.iter()).all(|(at, h)| other.ports.get(at) == Some(h))
            && (self.addresses.iter()).all(|(id, h)| other.addresses.get(id) == Some(h))
    }

    /// Drops every reservation of `deployment`.
    pub fn release(&mut self, deployment: &str) {
        self.ports.retain(|_, h| &*h.deployment != deployment);
        self.addresses.retain(|_, h| h.deployment != deployment);
    }
}

/// What gearnat records about one applied deployment (`deployments/<name>.state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub name: String,
    /// The file it was applied from, for `status` and re-applies at boot.
    pub source: Option<PathBuf>,
    pub runtime: String,
    /// Instance ids whose namespace may hold gearnat's wiring or table. Written before the
    /// kernel is changed (old and new instances together), so that a run that dies half way
    /// still leaves the next run a list of everything to clean up.
    pub instances: Vec<String>,
    /// Instances whose network namespace (netns runtime) or container (docker runtime) gearnat
    /// created, and so removes on `down`.
    pub created_netns: Vec<String>,
    /// A digest of what the resolved file (`deployments/<name>.json`) was last written from:
    /// while it matches, the 0.96 MB that 10,000 ports make need not be written out again to
    /// find that they did not change. Only a cache: a digest that differs rewrites the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_digest: Option<String>,
    /// How the last apply observed each instance: the next one observes the same while it
    /// still reads the file, and keeps what the file turns out to ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Probe>,
}

/// What observing one instance reads: its namespace and table always; with `address`, whether
/// its veth pair is in place for that address; and the sysctls named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<String>,
}

impl Probe {
    /// Whether what `self` reads includes all that `other` reads.
    pub fn covers(&self, other: &Probe) -> bool {
        self.id == other.id
            && other.address.is_none_or(|a| self.address == Some(a))
            && other.sysctls.iter().all(|k| self.sysctls.contains(k))
    }
}

/// A state directory made before gearnat (mode 0700 applies only to what it creates) may be
/// open to others; it is the user's directory, so gearnat says so rather than chmod it.
fn warn_if_open(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "state directory {} is mode {mode:o}; others can read gearnat's reservations \
                 (chmod 700 {0})",
                path.display()
            );
        }
    }
}

/// The state directory, locked for the lifetime of this value.
pub struct StateDir {
    path: PathBuf,
    _lock: Option<Flock<File>>,
}

impl StateDir {
    /// Opens the state directory for reading only: no lock, nothing created.
    pub fn read_only(path: &Path) -> StateDir {
        StateDir {
            path: path.to_path_buf(),
            _lock: None,
        }
    }

    /// Creates (mode 0700) and locks the state directory. When another gearnat holds the lock,
    /// `on_wait` is called once before blocking until it is released.
    pub fn lock(path: &Path, on_wait: impl FnOnce(&Path)) -> Result<StateDir, StateError> {
        let create = |p: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|source| StateError::CreateDir {
                    path: p.to_path_buf(),
                    source,
                })
        };
        create(path)?;
        create(&path.join("deployments"))?;
        warn_if_open(path);
        let lock_path = path.join("lock");
        let lock_err = |source: io::Error| StateError::Lock {
            path: lock_path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_err)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                on_wait(&lock_path);
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| lock_err(io::Error::from(e)))?
            }
            Err((_, e)) => return Err(lock_err(io::Error::from(e))),
        };
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// Locks the state directory at `path` when it exists and no other gearnat holds it;
    /// creates nothing and never waits.
    pub fn lock_if_free(path: &Path) -> Option<StateDir> {
        if !path.join("deployments").is_dir() {
            return None;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path.join("lock"))
            .ok()?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
        warn_if_open(path);
        Some(StateDir {
            path: path.to_path_buf(),
            _lock: Some(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reservations_path(&self) -> PathBuf {
        self.path.join("reservations.json")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.path
            .join("deployments")
            .join(format!("{name}.state.json"))
    }

    /// The resolved deployment in geard's output form (Containers and Instances).
    pub fn resolved_path(&self, name: &str) -> PathBuf {
        self.path.join("deployments").join(format!("{name}.json"))
    }

    pub fn reservations(&self) -> Result<Reservations, StateError> {
        Ok(read_json(&self.reservations_path())?.unwrap_or_default())
    }

    pub fn save_reservations(&self, r: &Reservations) -> Result<(), StateError> {
        write_json(&self.reservations_path(), r, Layout::Compact)
    }

    pub fn record(&self, name: &str) -> Result<Option<DeploymentRecord>, StateError> {
        read_json(&self.record_path(name))
    }

    pub fn save_record(&self, record: &DeploymentRecord) -> Result<(), StateError> {
        write_json(&self.record_path(&record.name), record, Layout::Pretty)
    }

    /// The reservations, written beside their file until [`Prepared::commit`].
    pub fn prepare_reservations(&self, r: &Reservations) -> Result<Prepared, StateError> {
        let path = self.reservations_path();
        let text =
            crate::timing::timed("render reservations", || render(&path, r, Layout::Compact))?;
        crate::timing::timed("write reservations", || write_synced(&path, &text))
    }

    /// geard's output file of deployment `name`, to be written beside it by
    /// [`Rendered::prepare`]; the caller knows it changed.
    pub fn render_resolved(
        &self,
        name: &str,
        value: &impl Serialize,
    ) -> Result<Rendered, StateError> {
        let path = self.resolved_path(name);
        let text = render(&path, value, Layout::Outline)?;
        Ok(Rendered { path, text })
    }

    /// Forgets a deployment: its record and its resolved file.
    pub fn remove_deployment(&self, name: &str) -> Result<(), StateError> {
        for path in [self.record_path(name), self.resolved_path(name)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Write { path, source }),
            }
        }
        Ok(())
    }

    /// Names of every deployment with a record, sorted.
    pub fn deployments(&self) -> Result<Vec<String>, StateError> {
        let dir = self.path.join("deployments");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Read { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".state.json").map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A state file's text, not yet on disk: rendering costs CPU, writing and syncing it costs the
/// disk, and an apply lets the disk take the reservations first.
#[derive(Debug)]
pub struct Rendered {
    path: PathBuf,
    text: Vec<u8>,
}

impl Rendered {
    /// Writes and syncs the file beside its place.
    pub fn prepare(self) -> Result<Prepared, StateError> {
        write_synced(&self.path, &self.text)
    }
}

/// A state file written and synced beside its place, not yet in it: [`Prepared::commit`] renames
/// it into place, and dropping it uncommitted removes it, leaving the old file as it was. An
/// apply writes its large files (10,000 ports: 0.96 MB) this way while the kernel is read and
/// changed, and only renames them once the change went in.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Prepared {
    /// Renames the file into place, durably (see [`write_json`]).
    pub fn commit(mut self) -> Result<(), StateError> {
        self.done = true;
        crate::release::replace(&self.tmp, &self.path)
            .and_then(|()| sync_dir(&self.path))
            .map_err(|source| StateError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// How a state file is laid out: indented where a person may read it, on one line where it
/// is only gearnat's and large (the reservations of 10,000 ports).
#[derive(Clone, Copy)]
enum Layout {
    Pretty,
    /// Indented down to [`OUTLINE_LEVELS`], each deeper value on one line: geard's output
    /// file, one line per port (10,000 ports: 0.96 MB instead of 1.56, half the time to write
    /// and sync).
    Outline,
    Compact,
}

/// The levels [`Layout::Outline`] indents: the file, its lists (`Containers`, `Instances`),
/// their entries, and the entries' lists (`PublicPorts`, `Ports`, `Links`).
const OUTLINE_LEVELS: usize = 4;

/// serde_json's pretty layout for the outer [`OUTLINE_LEVELS`] levels of arrays and objects;
/// deeper ones are written on one line, with a space after each `,` and `:`.
#[derive(Default)]
struct OutlineFormatter {
    depth: usize,
    has_value: bool,
}

impl OutlineFormatter {
    fn indented(&self) -> bool {
        self.depth <= OUTLINE_LEVELS
    }

    fn open<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        if self.indented() && self.has_value {
            self.newline(w, self.depth - 1)?;
        }
        self.depth -= 1;
        w.write_all(bracket)
    }

    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match (self.indented(), first) {
            (true, first) => {
                if !first {
                    w.write_all(b",")?;
                }
                self.newline(w, self.depth)
            }
            (false, true) => Ok(()),
            (false, false) => w.write_all(b", "),
        }
    }

    fn newline<W: ?Sized + Write>(&self, w: &mut W, levels: usize) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..levels {
            w.write_all(b"  ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for OutlineFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Writes `value` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the directory (rename(2) is atomic within a file system; the directory fsync makes the
/// rename itself durable). A file that already holds those bytes is left alone: reading and
/// comparing costs far less than the two fsyncs of a write (an unchanged re-apply).
fn write_json<T: Serialize>(path: &Path, value: &T, layout: Layout) -> Result<(), StateError> {
    let text = render(path, value, layout)?;
    if fs::read(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    write_synced(path, &text)?.commit()
}

/// `value` as the text of the state file `path`.
fn render<T: Serialize>(path: &Path, value: &T, layout: Layout) -> Result<Vec<u8>, StateError> {
    let text = match layout {
        Layout::Pretty => serde_json::to_vec_pretty(value),
        Layout::Outline => {
            let mut text = Vec::new();
            let mut ser =
                serde_json::Serializer::with_formatter(&mut text, OutlineFormatter::default());
            value.serialize(&mut ser).map(|()| text)
        }
        Layout::Compact => serde_json::to_vec(value),
    };
    let mut text = text.map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    text.push(b'\n');
    Ok(text)
}

/// `text` written and synced to a temporary file beside `path`.
fn write_synced(path: &Path, text: &[u8]) -> Result<Prepared, StateError> {
    let err = |source: io::Error| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let prepared = Prepared {
        tmp,
        path: path.to_path_buf(),
        done: false,
    };
    file.write_all(text).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_round_trip_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path(), |_| panic!("nobody else holds the lock")).unwrap();
        assert_eq!(state.reservations().unwrap(), Reservations::default());
        let mut r = Reservations::default();
        let holder = |d: &str| PortHolder {
            deployment: d.into(),
            instance: "a-1".into(),
            internal: 80,
        };
        let port = |proto| HostPort { proto, port: 4000 };
        r.ports.insert(port(Proto::Tcp), holder("one"));
        r.ports.insert(port(Proto::Udp), holder("two"));
        state.save_reservations(&r).unwrap();
        let back = state.reservations().unwrap();
        assert_eq!(back, r);
        assert_eq!(
            &*back.port_holder(Proto::Udp, 4000).unwrap().deployment,
            "two"
        );
        let mut released = back.clone();
        released.release("one");
        assert!(released.port_holder(Proto::Tcp, 4000).is_none());
        assert!(released.port_holder(Proto::Udp, 4000).is_some());
        // Giving back is within what was held; holding anything else is not.
        assert!(released.within(&back) && back.within(&back));
        assert!(!back.within(&released));
        let mut moved = released.clone();
        moved.ports.insert(port(Proto::Udp), holder("one"));
        assert!(!moved.within(&back));
    }

    #[test]
    fn reservations_written_before_grouping_are_read_and_written_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path(), |_| panic!("nobody else holds the lock")).unwrap();
        let path = dir.path().join("reservations.json");
        let old = r#"{
  "ports": {
    "tcp/6060": { "deployment": "web", "instance": "web-1", "internal": 80 },
    "udp/5353": { "deployment": "web", "instance": "web-2", "internal": 53 }
  },
  "addresses": { "web-1": { "deployment": "web", "address": "172.31.0.2" } }
}"#;
        fs::write(&path, old).unwrap();
        let r = state.reservations().unwrap();
        let web1 = r.port_holder(Proto::Tcp, 6060).unwrap();
        assert_eq!((&*web1.instance, web1.internal), ("web-1", 80));
        let web2 = r.port_holder(Proto::Udp, 5353).unwrap();
        assert_eq!((&*web2.instance, web2.internal), ("web-2", 53));
        assert_eq!(r.addresses["web-1"].address, Ipv4Addr::new(172, 31, 0, 2));

        state.save_reservations(&r).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            written["held_ports"],
            serde_json::json!({
                "web": {"web-1": {"tcp": [[6060, 80]]}, "web-2": {"udp": [[5353, 53]]}}
            })
        );
        assert!(written.get("ports").is_none(), "{written}");
        assert_eq!(state.reservations().unwrap(), r);
    }

    #[test]
    fn the_outline_layout_indents_four_levels_and_writes_deeper_values_on_a_line() {
        let value = serde_json::json!({
            "Containers": [{
                "Name": "web",
                "PublicPorts": [{"External": 6060, "Internal": 80}, {"Internal": 53}],
                "Links": [],
                "Environment": [{"Name": "A", "Value": [1, {}]}],
            }],
            "IdPrefix": "",
        });
        let text = render(Path::new("web.json"), &value, Layout::Outline).unwrap();
        let expected = r#"{
  "Containers": [
    {
      "Environment": [
        {"Name": "A", "Value": [1, {}]}
      ],
      "Links": [],
      "Name": "web",
      "PublicPorts": [
        {"External": 6060, "Internal": 80},
        {"Internal": 53}
      ]
    }
  ],
  "IdPrefix": ""
}
"#;
        assert_eq!(String::from_utf8(text.clone()).unwrap(), expected);
        let back: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn a_prepared_file_replaces_the_old_one_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path(), |_| {}).unwrap();
        let path = state.resolved_path("web");
        fs::write(&path, "old\n").unwrap();
        let rendered = state.render_resolved("web", &"new").unwrap();
        assert!(!path.with_extension("tmp").exists());
        let dropped = rendered.prepare().unwrap();
        assert!(path.with_extension("tmp").exists());
        drop(dropped);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n");
        assert!(!path.with_extension("tmp").exists());
        let rendered = state.render_resolved("web", &"new").unwrap();
        rendered.prepare().unwrap().commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "\"new\"\n");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_probe_covers_another_that_reads_no_more() {
        let probe = |address: Option<&str>, sysctls: &[&str]| Probe {
            id: "web-1".into(),
            address: address.map(|a| a.parse().unwrap()),
            sysctls: sysctls.iter().map(|s| s.to_string()).collect(),
        };
        let full = probe(Some("10.211.0.2"), &["a", "b"]);
        assert!(full.covers(&full));
        assert!(full.covers(&probe(None, &[])));
        assert!(full.covers(&probe(Some("10.211.0.2"), &["b"])));
        assert!(!full.covers(&probe(Some("10.211.0.3"), &[])));
        assert!(!full.covers(&probe(None, &["c"])));
        assert!(!probe(None, &["a"]).covers(&probe(Some("10.211.0.2"), &["a"])));
        let other = Probe {
            id: "web-2".into(),
            ..probe(None, &[])
        };
        assert!(!full.covers(&other));
    }

    #[test]
    fn lock_if_free_creates_nothing_and_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert!(StateDir::lock_if_free(&path).is_none());
        assert!(!path.exists());
        let first = StateDir::lock(&path, |_| {}).unwrap();
        assert!(StateDir::lock_if_free(&path).is_none());
        drop(first);
        let locked = StateDir::lock_if_free(&path).expect("a free, existing state directory");
        let path2 = path.clone();
        let waited = std::thread::spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let _second = StateDir::lock(&path2, |_| tx.send(()).unwrap()).unwrap();
            rx.try_recv().is_ok()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(locked);
        assert!(
            waited.join().unwrap(),
            "the lock taken ahead is a real lock"
        );
    }

    #[test]
    fn state_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let _state = StateDir::lock(&path, |_| {}).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_second_lock_waits_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::lock(dir.path(), |_| {}).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = StateDir::lock(&path, |_| tx.send(()).unwrap()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("second run reports waiting");
        drop(first);
        waiter.join().unwrap();
    }

    #[test]
    fn corrupt_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path(), |_| {}).unwrap();
        fs::write(dir.path().join("reservations.json"), "{oops").unwrap();
        let err = state.reservations().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("reservations.json")).unwrap(),
            "{oops"
        );
    }
}
