//! Running code inside another network namespace, and named namespaces like `ip netns` makes.
//!
//! Every part of gearnat that touches another namespace goes through [`run_in`]: it runs a
//! closure on a fresh, dedicated std thread that has entered the namespace. The thread is never
//! a tokio worker or blocking-pool thread, because `setns` changes only the calling thread and a
//! pooled thread would carry the namespace into unrelated later work. Sockets keep the namespace
//! they were created in, and child processes inherit the thread's, so both may be made inside
//! the closure.
//!
//! Named namespaces live in `/run/netns/NAME`, a bind mount of a namespace file onto an empty
//! file, exactly as iproute2's `ip netns add` leaves them, so `ip netns list` and
//! `ip netns exec NAME` work with gearnat's namespaces and the other way round. Create them
//! from the host's mount namespace: a namespace created under `ip netns exec` does not outlive
//! the command (see `warn_if_private_mounts`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, statfs, NSFS_MAGIC};

/// Where named network namespaces are bound (iproute2's `NETNS_RUN_DIR`).
pub const RUN_DIR: &str = "/run/netns";

/// A failure to open, enter, create or delete a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is no namespace file (not on nsfs)")]
    NotNamespace { path: PathBuf },
    #[error("starting a thread for network namespace {name}: {source}")]
    Spawn { name: String, source: io::Error },
    #[error("entering network namespace {name}: {}", .source.desc())]
    Enter { name: String, source: Errno },
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("network namespace {name} already exists")]
    Exists { name: String },
    #[error("creating {path}: {source}")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("making {RUN_DIR} a shared mount point: {}", .source.desc())]
    SharedRunDir { source: Errno },
    #[error("creating network namespace {name}: {}", .source.desc())]
    Unshare { name: String, source: Errno },
    #[error("binding network namespace {name} to {path}: {}", .source.desc())]
    Bind {
        name: String,
        path: PathBuf,
        source: Errno,
    },
    #[error("unmounting network namespace {path}: {}", .source.desc())]
    Unmount { path: PathBuf, source: Errno },
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// An open network namespace: holding it keeps the namespace alive, whatever happens to the
/// path or process it was opened from.
#[derive(Debug)]
pub struct Netns {
    file: File,
    name: String,
}

/// Identity of a namespace (device and inode of its nsfs file): two [`Netns`] with equal ids
/// are the same namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl Netns {
    /// The calling thread's namespace (`/proc/thread-self/ns/net`, not `/proc/self`: the
    /// calling thread may have entered another namespace than the main thread).
    /// Its display name is the kernel's, `net:[INODE]`.
    pub fn current() -> Result<Netns, Error> {
        let mut ns = Self::open_as("/proc/thread-self/ns/net", "current".to_string())?;
        ns.name = format!("net:[{}]", ns.id()?.ino);
        Ok(ns)
    }

    /// A namespace file anywhere: `/proc/PID/ns/net`, Docker's `SandboxKey`, `/run/netns/NAME`.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Netns, Error> {
        let path = path.as_ref();
        Self::open_as(path, path.display().to_string())
    }

    /// The named namespace `/run/netns/NAME`; its display name is NAME.
    pub fn open_named(name: &str) -> Result<Netns, Error> {
        check_name(name)?;
        Self::open_as(named_path(name), name.to_string())
    }

    /// The namespace of process `pid`. Open it right after learning the pid: pids are reused.
    pub fn open_pid(pid: u32) -> Result<Netns, Error> {
        Self::open_as(format!("/proc/{pid}/ns/net"), format!("pid {pid}"))
    }

    fn open_as(path: impl AsRef<Path>, name: String) -> Result<Netns, Error> {
        let path = path.as_ref();
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let fs = fstatfs(&file).map_err(|e| open_err(io::Error::from(e)))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(Error::NotNamespace {
                path: path.to_path_buf(),
            });
        }
        Ok(Netns { file, name })
    }

    /// The name used in messages: the namespace's name for named ones, else its path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which namespace this is, to compare two handles.
    pub fn id(&self) -> Result<NetnsId, Error> {
        let meta = self.file.metadata().map_err(|source| Error::Open {
            path: PathBuf::from(&self.name),
            source,
        })?;
        Ok(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns, Error> {
        let file = self.file.try_clone().map_err(|source| Error::Open {
            path: PathBuf::from(&self.name),
            source,
        })?;
        Ok(Netns {
            file,
            name: self.name.clone(),
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` on a new thread that has entered `ns`, and returns what it returns.
///
/// The thread ends with `f`, so the namespace never leaks into other work. A panic in `f` is
/// resumed in the caller. The closure may borrow from the caller (the thread is scoped). The
/// caller blocks until `f` returns: from async code, call this inside `spawn_blocking` (`f`
/// still runs on its own thread, never on the pooled one).
///
/// A caller that is in `ns` already, outside any async runtime, runs `f` itself: no namespace
/// is entered, so none can leak, and a thread costs more than most of the checks made this way
/// (ten instances observed at 10,000 mappings spawned 40 threads, a quarter of them for this).
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    if tokio::runtime::Handle::try_current().is_err() && already_in(ns) {
        return Ok(f());
    }
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("gearnat-netns".to_string())
            .spawn_scoped(scope, move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
                    name: ns.name.clone(),
                    source,
                })?;
                Ok(f())
            })
            .map_err(|source| Error::Spawn {
                name: ns.name.clone(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread into `ns`; only for a thread that ends with the work it was started
/// for (see [`crate::parallel::OwnThread`]), which [`run_in`] then runs inline.
pub(crate) fn enter_own_thread(ns: &Netns, _own: &crate::parallel::OwnThread) -> Result<(), Error> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        name: ns.name.clone(),
        source,
    })
}

/// Whether the calling thread is in `ns`.
fn already_in(ns: &Netns) -> bool {
    match (fs::metadata("/proc/thread-self/ns/net"), ns.file.metadata()) {
        (Ok(here), Ok(there)) => here.dev() == there.dev() && here.ino() == there.ino(),
        _ => false,
    }
}

/// Path of the named namespace NAME.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// Is `/run/netns/NAME` a bound namespace? An empty file left by a crash is not.
pub fn exists_named(name: &str) -> bool {
    check_name(name).is_ok()
        && statfs(&named_path(name)).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Creates the named namespace `/run/netns/NAME` the way `ip netns add NAME` does, without
/// forking: a dedicated thread unshares its network namespace and binds it to the file.
///
/// An empty file left at the path (a crash between creating the file and binding it) is
/// reused; a bound namespace of that name is an [`Error::Exists`].
pub fn create_named(name: &str) -> Result<Netns, Error> {
    check_name(name)?;
    // Within this process, creations are serialised: two threads upgrading the directory at
    // once would stack two bind mounts, and two creating one name would both bind it.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    make_run_dir_shared()?;
    warn_if_private_mounts(name);
    let path = named_path(name);
    create_mount_point(name, &path)?;

    let bound = thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("gearnat-netns".to_string())
            .spawn_scoped(scope, || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Unshare {
                    name: name.to_string(),
                    source,
                })?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| Error::Bind {
                    name: name.to_string(),
                    path: path.clone(),
                    source,
                })
            })
            .map_err(|source| Error::Spawn {
                name: name.to_string(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    if let Err(e) = bound {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Netns::open_named(name)
}

/// Deletes the named namespace like `ip netns delete`: detaches the bind mount (the namespace
/// itself lives on while a process or handle still holds it) and removes the file.
/// Returns whether there was anything to delete; a missing namespace is no error.
pub fn delete_named(name: &str) -> Result<bool, Error> {
    check_name(name)?;
    let path = named_path(name);
    let mut deleted = false;
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) => deleted = true,
        // EINVAL: not a mount point (an unbound file); ENOENT: no file at all.
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(source) => return Err(Error::Unmount { path, source }),
    }
    match fs::remove_file(&path) {
        Ok(()) => deleted = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Remove { path, source }),
    }
    Ok(deleted)
}

/// The names iproute2 accepts: one path component.
fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a directory name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Makes `/run/netns` a shared mount point, as iproute2 does (ip/ipnetns.c, `netns_add`): an
/// unmount of a namespace file then propagates to every mount namespace, so the namespace is
/// freed instead of pinned by a stale copy of the mount elsewhere.
fn make_run_dir_shared() -> Result<(), Error> {
    if let Err(e) = fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(RUN_DIR)
    {
        return Err(Error::CreateFile {
            path: PathBuf::from(RUN_DIR),
            source: e,
        });
    }
    let make_shared = || {
        mount(
            None::<&str>,
            RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself to make it one.
        Err(Errno::EINVAL) => {
            mount(
                Some(RUN_DIR),
                RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| Error::SharedRunDir { source })?;
            make_shared().map_err(|source| Error::SharedRunDir { source })
        }
        Err(source) => Err(Error::SharedRunDir { source }),
    }
}

/// Under `ip netns exec` (or any private mount namespace made a slave of the host's), the bind
/// mount stays in that mount namespace: the namespace is gone when the last process in it
/// exits, and `/run/netns/NAME` is left an empty file. Seen with iproute2 itself:
/// `ip netns exec A ip netns add B` leaves B unusable. Only warn: a container whose mounts are
/// its own is a legitimate place to run.
fn warn_if_private_mounts(name: &str) {
    let ino = |path: &str| fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let (ours, init) = (ino("/proc/thread-self/ns/mnt"), ino("/proc/1/ns/mnt"));
    // PID 1's namespace is unreadable inside a sandbox: nothing to compare then.
    if ours.is_some() && init.is_some() && ours != init {
        log::warn!(
            "creating network namespace {name} from another mount namespace than PID 1's: it \
             disappears when this process exits unless the mount propagates (not under \
             `ip netns exec`)"
        );
    }
}

/// Creates the empty file the namespace is bound onto.
fn create_mount_point(name: &str, path: &Path) -> Result<(), Error> {
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(path)
    };
    match create() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if exists_named(name) {
                return Err(Error::Exists {
                    name: name.to_string(),
                });
            }
            log::debug!("reusing the unbound namespace file {}", path.display());
            Ok(())
        }
        Err(source) => Err(Error::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_in_the_namespace_runs_the_closure_itself() {
        let here = Netns::current().unwrap();
        let me = thread::current().id();
        assert_eq!(run_in(&here, || thread::current().id()).unwrap(), me);
        // Inside an async runtime, on a thread of its own as for any other namespace.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inside = rt.block_on(async { run_in(&here, || thread::current().id()).unwrap() });
        assert_ne!(inside, me);
    }

    #[test]
    fn names_are_single_path_components() {
        assert!(check_name("mongodb-1").is_ok());
        assert!(check_name("a.b").is_ok());
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(!exists_named("../etc"));
    }

    #[test]
    fn only_namespace_files_open() {
        let e = Netns::open_path("/proc/self/status").unwrap_err();
        assert!(matches!(e, Error::NotNamespace { .. }), "{e}");
        assert!(matches!(
            Netns::open_named("a/b"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn handles_compare_by_namespace() {
        let current = Netns::current().unwrap();
        let by_pid = Netns::open_pid(std::process::id()).unwrap();
        assert_eq!(current.id().unwrap(), by_pid.id().unwrap());
        assert_eq!(
            current.try_clone().unwrap().id().unwrap(),
            current.id().unwrap()
        );
        assert_eq!(
            current.name(),
            format!("net:[{}]", current.id().unwrap().ino)
        );
        assert_eq!(by_pid.name(), format!("pid {}", std::process::id()));
    }
}
