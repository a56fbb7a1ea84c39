//! Closing netfilter sockets without waiting for nf_tables to free what a batch removed.
//!
//! nf_tables frees removed objects (elements, rules, tables) on a kernel worker after an RCU
//! grace period, about 10 ms on the test machine (HZ=250). The release of a NETLINK_NETFILTER
//! socket, its last close, waits for that work: nf_tables' NETLINK_URELEASE notifier flushes it
//! (`nft_rcv_nl_event` in net/netfilter/nf_tables_api.c). `nft delete element` pays that wait
//! as it exits; a process that closed its socket on a thread of its own would still pay it at
//! its exit, which waits for every thread, though its change was in effect once the kernel
//! acknowledged the batch.
//!
//! [`release`] gives the socket to the kernel instead: a new io_uring takes it into its table of
//! registered files and is closed at once. Closing an io_uring queues its teardown on a kernel
//! worker (`io_ring_exit_work` in io_uring/io_uring.c), so the socket's last reference goes
//! there, and the wait with it. Where io_uring is not to be had (`kernel.io_uring_disabled`, a
//! seccomp profile that forbids it, a kernel before 5.1) the socket is closed on a thread of
//! its own: the caller goes on at once, and only the process's exit waits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// IORING_REGISTER_FILES (<linux/io_uring.h>).
const IORING_REGISTER_FILES: libc::c_uint = 2;
/// The size of `struct io_uring_params`, which io_uring_setup reads (zero: no options) and
/// fills in.
const IO_URING_PARAMS_LEN: usize = 120;

/// How [`release`] let a socket go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// To an io_uring's teardown, on a kernel worker.
    ToKernel,
    /// Closed on a thread of this process.
    OnThread,
    /// Closed by the caller, which waited (no second descriptor could be made).
    InPlace,
}

/// Lets `fd`, the last descriptor of a netfilter socket, go without waiting for its release.
pub(crate) fn release(fd: OwnedFd) -> Released {
    match to_kernel(fd) {
        Ok(()) => Released::ToKernel,
        Err((fd, error)) => {
            log::debug!("closing a netfilter socket on a thread (io_uring: {error})");
            // Closed here, with the closure, if no thread can be started.
            let _ = std::thread::Builder::new()
                .name("netfilter close".into())
                .spawn(move || drop(fd));
            Released::OnThread
        }
    }
}

/// Registers `fd` with a new io_uring and closes both: the ring then holds the socket's last
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
