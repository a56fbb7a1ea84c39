//! Letting go of files whose last close is slow, without waiting for it.
//!
//! Two such closes lie on apply's path:
//! - A NETLINK_NETFILTER socket. nf_tables frees removed objects (elements, rules, tables) on a
//!   kernel worker after an RCU grace period, about 10 ms on the test machine (HZ=250), and the
//!   release of a netfilter socket waits for that work: nf_tables' NETLINK_URELEASE notifier
//!   flushes it (`nft_rcv_nl_event` in net/netfilter/nf_tables_api.c). `nft delete element`
//!   pays that wait as it exits; a process that closed its socket on a thread of its own still
//!   pays it at its exit, which waits for every thread, though its change was in effect once the
//!   kernel acknowledged the batch.
//! - A state file replaced by a rename. The old file's inode goes with its last reference, and
//!   the file system frees its blocks then; on a file system mounted with `discard` (as the
//!   test machine's ext4 is) the freeing waits for the disk to discard them: 0.2 to 1 ms per
//!   file, in `rename`.
//!
//! [`release`] gives such a file to the kernel instead: a new io_uring takes it into its table
//! of registered files and is closed at once. Closing an io_uring queues its teardown on a
//! kernel worker (`io_ring_exit_work` in io_uring/io_uring.c), so the file's last reference
//! goes there, and the wait with it. Where io_uring is not to be had (`kernel.io_uring_disabled`,
//! a seccomp profile that forbids it, a kernel before 5.1) the file is closed on a thread of
//! its own: the caller goes on at once, and only the process's exit waits.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// IORING_REGISTER_FILES (<linux/io_uring.h>).
const IORING_REGISTER_FILES: libc::c_uint = 2;
/// The size of `struct io_uring_params`, which io_uring_setup reads (zero: no options) and
/// fills in.
const IO_URING_PARAMS_LEN: usize = 120;

/// How [`release`] let a file go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// To an io_uring's teardown, on a kernel worker.
    ToKernel,
    /// Closed on a thread of this process.
    OnThread,
    /// Closed by the caller, which waited (no second descriptor could be made).
    InPlace,
}

/// Lets `fd`, the last descriptor of its file, go without waiting for the file's release.
pub fn release(fd: OwnedFd) -> Released {
    match to_kernel(fd) {
        Ok(()) => Released::ToKernel,
        Err((fd, error)) => {
            log::debug!("closing a file on a thread (io_uring: {error})");
            close_on_thread(fd)
        }
    }
}

/// Closes `fd` on a thread of its own (here, with the closure, if no thread can be started).
fn close_on_thread(fd: OwnedFd) -> Released {
    let _ = std::thread::Builder::new()
        .name("close".into())
        .spawn(move || drop(fd));
    Released::OnThread
}

/// Renames `from` to `to`, atomically replacing the file there, and lets the file replaced go
/// by [`release`] rather than freeing it inside `rename`.
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
    // Held open across the rename, the old file outlives its name.
    let replaced = File::open(to).ok();
    std::fs::rename(from, to)?;
    if let Some(file) = replaced {
        release(file.into());
    }
    Ok(())
}

/// Whether this process may make an io_uring, as far as `kernel.io_uring_disabled` says: 0 for
/// all, 1 for privileged processes (tests run as root or not at all), 2 for none.
#[cfg(test)]
pub fn io_uring_allowed() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) => match v.trim() {
            "0" => true,
            "1" => nix::unistd::geteuid().is_root(),
            _ => false,
        },
        // Kernels without the setting allow it.
        Err(_) => true,
    }
}

/// Registers `fd` with a new io_uring and closes both: the ring then holds the file's last
/// reference until its teardown drops it. On failure `fd` comes back, still open.
fn to_kernel(fd: OwnedFd) -> Result<(), (OwnedFd, io::Error)> {
    let ring = match new_ring() {
        Ok(ring) => ring,
        Err(error) => return Err((fd, error)),
    };
    let fds = [fd.as_raw_fd()];
    // SAFETY: `fds` holds one open descriptor and lives across the call; the kernel takes its
    // own reference to the file and reads nothing else of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_FILES,
            fds.as_ptr(),
            1 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err((fd, io::Error::last_os_error()));
    }
    drop(fd);
    drop(ring);
    Ok(())
}

/// An io_uring of one entry that is never submitted to: only its table of files is used.
fn new_ring() -> io::Result<OwnedFd> {
    let mut params = [0u8; IO_URING_PARAMS_LEN];
    // SAFETY: `params` is a zeroed io_uring_params the kernel may write for the call's length.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: io_uring_setup returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process still has a descriptor of a deleted file named `name`.
    fn holds_deleted(name: &str) -> bool {
        let suffix = format!("/{name} (deleted)");
        std::fs::read_dir("/proc/self/fd").unwrap().any(|entry| {
            let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
            target.to_string_lossy().ends_with(&suffix)
        })
    }

    /// Waits up to 5 s for this process to let go of the deleted file `name`.
    fn let_go_of(name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while holds_deleted(name) {
            assert!(std::time::Instant::now() < deadline, "{name} is still open");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn the_fallback_closes_on_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fallback.json");
        std::fs::write(&path, "x").unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(holds_deleted("fallback.json"));
        assert_eq!(close_on_thread(file.into()), Released::OnThread);
        let_go_of("fallback.json");
    }

    #[test]
    fn a_replaced_file_is_swapped_atomically_and_not_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("state.json"), dir.path().join("state.tmp"));
        std::fs::write(&old, "old\n").unwrap();
        std::fs::write(&new, "new\n").unwrap();
        replace(&new, &old).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "new\n");
        assert!(!new.exists());
        // The old file was held across the rename and let go: to the kernel at once, or on a
        // thread soon after; never kept.
        let_go_of("state.json");

        // Nothing to replace: a plain rename.
        std::fs::write(&new, "newer\n").unwrap();
        std::fs::remove_file(&old).unwrap();
        replace(&new, &old).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "newer\n");
        // A rename that fails leaves both names as they were.
        let missing = dir.path().join("missing.tmp");
        assert!(replace(&missing, &old).is_err());
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "newer\n");
    }

    #[test]
    fn released_files_go_to_the_kernel_when_it_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let released = release(File::open(&path).unwrap().into());
        let expected = if io_uring_allowed() {
            Released::ToKernel
        } else {
            Released::OnThread
        };
        assert_eq!(released, expected);
    }
}
