//! Following nf_tables' change notifications (the NFNLGRP_NFTABLES multicast group, what
//! `nft monitor` reads) to notice when someone else deletes or flushes gearnat's table.
//!
//! The kernel sends one message per changed object of a committed batch, then a NEWGEN message
//! naming the process that committed it (nf_tables_api.c, `nf_tables_commit`: the objects'
//! notifications, then `nf_tables_gen_notify`). Deletions are held until that NEWGEN and
//! dropped when the committer is a gearnat process (its threads are named `gearnat...`): its own
//! changes are intended.

use std::io;
use std::time::Duration;

use super::netlink::{self, HEADER_LEN, NFGEN_LEN};
use super::sys::{MsgBuf, Socket};
use crate::ruleset::TABLE;

/// nfnetlink subsystem of nf_tables, and its message types (<linux/netfilter/nf_tables.h>).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
/// The table's name is attribute 1 of tables, chains, rules, sets and element lists alike.
const ATTR_TABLE: u16 = 1;
const NFTA_GEN_PROC_NAME: u16 = 3;
const NFPROTO_IPV4: u8 = 2;
/// Datagrams are single notifications; one page-sized object is plenty.
const RECV_CAPACITY: usize = 64 * 1024;

/// Something removed from gearnat's table by another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// `table`, `chain`, `rule`, `map` or `element`.
    pub what: &'static str,
    /// The committing process's name, when the kernel says it.
    pub by: Option<String>,
}

/// A subscription to nf_tables' notifications in the calling thread's namespace.
pub struct Monitor {
    socket: Socket,
    buf: MsgBuf,
    pending: Vec<&'static str>,
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let socket = Socket::open()?;
        socket.join_group(libc::NFNLGRP_NFTABLES)?;
        let _ = socket.force_buffers(0, 4 << 20);
        Ok(Monitor {
            socket,
            buf: MsgBuf::with_capacity(RECV_CAPACITY),
            pending: Vec::new(),
        })
    }

    /// Waits up to `timeout` for notifications and returns the removals others made in
    /// gearnat's table. Lost notifications (the receive queue overflowed) count as one removal
    /// of unknown kind, so the caller re-checks rather than missing one.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<Removal>> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        if !self.socket.wait_readable(ms)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        loop {
            match self.socket.recv(&mut self.buf, RECV_CAPACITY, false) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.pending.clear();
                    out.push(Removal {
                        what: "notifications (lost)",
                        by: None,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            }
            let bytes = self.buf.as_bytes().to_vec();
            for msg in netlink::messages(&bytes).unwrap_or_default() {
                self.take(msg.kind, msg.bytes, &mut out);
            }
        }
    }

    fn take(&mut self, kind: u16, bytes: &[u8], out: &mut Vec<Removal>) {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            return;
        }
        let Some(payload) = bytes.get(HEADER_LEN..) else {
            return;
        };
        let family = payload.first().copied();
        let attrs = payload
            .get(NFGEN_LEN..)
            .and_then(netlink::attributes)
            .unwrap_or_default();
        let attr = |kind: u16| {
            attrs.iter().find(|a| a.kind == kind).map(|a| {
                let v = a.value.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(v).into_owned()
            })
        };
        match kind & 0xff {
            NFT_MSG_NEWGEN => {
                let by = attr(NFTA_GEN_PROC_NAME);
                let ours = by.as_deref().is_some_and(|n| n.starts_with("gearnat"));
                for what in self.pending.drain(..) {
                    if !ours {
                        out.push(Removal {
                            what,
                            by: by.clone(),
                        });
                    }
                }
            }
            msg => {
                let what = match msg {
                    NFT_MSG_DELTABLE => "table",
                    NFT_MSG_DELCHAIN => "chain",
                    NFT_MSG_DELRULE => "rule",
                    NFT_MSG_DELSET => "map",
                    NFT_MSG_DELSETELEM => "element",
                    _ => return,
                };
                if family == Some(NFPROTO_IPV4) && attr(ATTR_TABLE).as_deref() == Some(TABLE) {
                    self.pending.push(what);
                }
            }
        }
    }
}
