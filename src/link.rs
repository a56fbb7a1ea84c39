//! The link layer over rtnetlink: the bridge, instances' veth pairs, their addresses and
//! default routes, sysctls and listening ports.
//!
//! Every function works in the calling thread's network namespace: call it inside
//! [`netns::run_in`] to work in another one. Netlink requests run on a
//! current-thread tokio runtime made for the call, on the calling thread, so the netlink socket
//! is opened in that thread's namespace; do not call these from async code.
//!
//! The `ensure_*` functions are idempotent and report whether they changed anything, so
//! re-applying an unchanged deployment writes nothing; the `*_in_place` twins only look.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::model::Proto;
use crate::netns::{self, Netns};
use crate::ruleset::Ipv4Net;

/// Longest interface name the kernel takes (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// A netlink request the kernel refused, or a failure of the netlink connection.
#[derive(Debug)]
pub struct NetlinkError(Box<rtnetlink::Error>);

impl NetlinkError {
    /// The kernel's errno, when the kernel answered with one.
    pub fn errno(&self) -> Option<Errno> {
        match &*self.0 {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
                Some(Errno::from_raw(msg.raw_code().abs()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno() {
            Some(errno) => f.write_str(errno.desc()),
            None => self.0.fmt(f),
        }
    }
}

impl std::error::Error for NetlinkError {}

impl From<rtnetlink::Error> for NetlinkError {
    fn from(e: rtnetlink::Error) -> Self {
        NetlinkError(Box::new(e))
    }
}

/// A failing step of the link layer, with the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting a netlink runtime: {0}")]
    Runtime(io::Error),
    #[error("opening a netlink socket: {0}")]
    Connect(io::Error),
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfname { name: String, reason: &'static str },
    #[error("looking up link {name}: {source}")]
    GetLink { name: String, source: NetlinkError },
    #[error("forgetting the neighbour entry of {address}: {source}")]
    Neighbour {
        address: Ipv4Addr,
        source: NetlinkError,
    },
    #[error("{name} is a {actual} link, not a {wanted}")]
    WrongKind {
        name: String,
        actual: String,
        wanted: &'static str,
    },
    #[error("bridge {name} does not exist")]
    NoBridge { name: String },
    #[error("creating bridge {name}: {source}")]
    CreateBridge { name: String, source: NetlinkError },
    #[error("creating veth {host_if} for {instance}: {source}")]
    CreateVeth {
        host_if: String,
        instance: String,
        source: NetlinkError,
    },
    #[error("veth {host_if} has no peer {inner_if} in {instance}")]
    NoPeer {
        host_if: String,
        inner_if: String,
        instance: String,
    },
    #[error("looking up the namespace id of {instance}: {source}")]
    GetNsid {
        instance: String,
        source: NetlinkError,
    },
    #[error("attaching {name} to bridge {bridge}: {source}")]
    Attach {
        name: String,
        bridge: String,
        source: NetlinkError,
    },
    #[error("setting {name} up: {source}")]
    SetUp { name: String, source: NetlinkError },
    #[error("deleting link {name}: {source}")]
    DeleteLink { name: String, source: NetlinkError },
    #[error("listing addresses of {name}: {source}")]
    GetAddresses { name: String, source: NetlinkError },
    #[error("adding address {address} to {name}: {source}")]
    AddAddress {
        name: String,
        address: String,
        source: NetlinkError,
    },
    #[error("removing address {address} from {name}: {source}")]
    DeleteAddress {
        name: String,
        address: String,
        source: NetlinkError,
    },
    #[error("listing routes: {source}")]
    GetRoutes { source: NetlinkError },
    #[error("setting the default route via {gateway} on {name}: {source}")]
    SetRoute {
        name: String,
        gateway: Ipv4Addr,
        source: NetlinkError,
    },
    #[error("invalid sysctl key {key:?}: {reason}")]
    SysctlKey { key: String, reason: &'static str },
    #[error("reading sysctl {key}: {source}")]
    SysctlRead { key: String, source: io::Error },
    #[error("writing sysctl {key} = {value}: {source}")]
    SysctlWrite {
        key: String,
        value: String,
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadProc { path: PathBuf, source: io::Error },
    #[error("{path}: unreadable line {line:?}")]
    ParseProc { path: PathBuf, line: String },
    #[error(transparent)]
    Netns(#[from] netns::Error),
}

/// Whether a step is carried out or only checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    Check,
}

/// The host-side name of instance `instance_id`'s veth: `gn` and 13 hex digits of a 64-bit
/// FNV-1a hash of the id, folded to 52 bits. Stable across runs and versions (no std hasher),
/// and within the kernel's 15 characters whatever the id's length.
pub fn host_ifname(instance_id: &str) -> String {
    let hash = fnv1a64(instance_id.as_bytes());
    let folded = (hash ^ (hash >> 52)) & ((1 << 52) - 1);
    format!("gn{folded:013x}")
}

/// FNV-1a, 64 bits (Fowler, Noll, Vo; the parameters of draft-eastlake-fnv).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(PRIME)
    })
}

/// Ensures bridge `name` exists, has the address `gateway` (its address and prefix) and is up.
/// Other addresses on the bridge are left alone. Returns whether anything changed.
pub fn ensure_bridge(name: &str, gateway: Ipv4Net) -> Result<bool, Error> {
    check_ifname(name)?;
    netlink(|h| bridge(h, name, gateway, Mode::Apply))
}

/// Is the bridge already as [`ensure_bridge`] would leave it (true: nothing to do)? Only reads.
pub fn bridge_in_place(name: &str, gateway: Ipv4Net) -> Result<bool, Error> {
    check_ifname(name)?;
    netlink(|h| bridge(h, name, gateway, Mode::Check)).map(|changes| !changes)
}

/// Ensures a veth pair joins bridge `bridge` (in the calling thread's namespace) to `instance`:
/// `host_if` here, attached to the bridge and up; `inner_if` inside the instance, created there
/// directly, up, with `address` as its only IPv4 address; `lo` up and the default route via
/// `gateway` inside the instance. A `host_if` whose peer is not in `instance` (a namespace
/// recreated since) is replaced. Returns whether anything changed.
pub fn ensure_veth(
    host_if: &str,
    bridge: &str,
    instance: &Netns,
    inner_if: &str,
    address: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<bool, Error> {
    let veth = Veth {
        host_if,
        bridge,
        instance,
        inner_if,
        address,
        gateway,
    };
    veth.check_names()?;
    let host_changed = netlink(|h| veth.host_side(h, Mode::Apply))?;
    let inner_changed = netns::run_in(instance, || netlink(|h| veth.inner_side(h, Mode::Apply)))??;
    Ok(host_changed || inner_changed)
}

/// Is the pair already as [`ensure_veth`] would leave it (true: nothing to do)? Only reads;
/// a missing bridge, link or namespace setting is reported as false, not as an error.
pub fn veth_in_place(
    host_if: &str,
    bridge: &str,
    instance: &Netns,
    inner_if: &str,
    address: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<bool, Error> {
    let veth = Veth {
        host_if,
        bridge,
        instance,
        inner_if,
        address,
        gateway,
    };
    let host_end = veth_host_ends_in_place(std::slice::from_ref(&veth))?[0];
    Ok(host_end && netns::run_in(instance, || veth.inner_in_place())??)
}

/// [`veth_in_place`] of the host ends of several pairs, over one netlink connection of the
/// calling thread's namespace; each pair's inner end is checked with [`Veth::inner_in_place`]
/// from inside its instance. Observing ten instances this way opens one connection for their
/// host ends instead of ten.
pub fn veth_host_ends_in_place(veths: &[Veth<'_>]) -> Result<Vec<bool>, Error> {
    for veth in veths {
        veth.check_names()?;
    }
    netlink(|h| async move {
        let mut out = Vec::with_capacity(veths.len());
        for veth in veths {
            out.push(!veth.host_side(h.clone(), Mode::Check).await?);
        }
        Ok(out)
    })
}

/// Deletes link `name` (for a veth, both ends go). Returns false when there was none.
pub fn delete_link(name: &str) -> Result<bool, Error> {
    check_ifname(name)?;
    netlink(|h| async move {
        let Some(link) = get_link(&h, name).await? else {
            return Ok(false);
        };
        match h
            .link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(NetlinkError::from)
        {
            Ok(()) => Ok(true),
            // Gone meanwhile (its namespace was destroyed, or its peer deleted).
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(false),
            Err(source) => Err(Error::DeleteLink {
                name: name.to_string(),
                source,
            }),
        }
    })
}

/// Drops the neighbour (ARP) entries for `address` in the calling thread's namespace. Returns
/// whether there were any.
///
/// An instance whose namespace was replaced (a restarted or recreated container) has a new
/// MAC address behind its old IP address. The host's cached entry would send it frames to the
/// old MAC until the entry goes stale and is re-probed (up to a minute with the defaults of
/// `base_reachable_time`, `delay_first_probe_time`, Documentation/networking/ip-sysctl.rst),
/// and an instance that only listens never sends the ARP that would correct it.
pub fn forget_neighbour(address: Ipv4Addr) -> Result<bool, Error> {
    netlink(|h| async move {
        let err = |source| Error::Neighbour { address, source };
        let mut all = h.neighbours().get().execute();
        let mut found = Vec::new();
        while let Some(n) = all.try_next().await.map_err(|e| err(e.into()))? {
            let ours = n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if *ip == address)
            });
            if ours {
                found.push(n);
            }
        }
        let any = !found.is_empty();
        for n in found {
            match h
                .neighbours()
                .del(n)
                .execute()
                .await
                .map_err(NetlinkError::from)
            {
                Ok(()) => {}
                Err(e) if e.errno() == Some(Errno::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(any)
    })
}

/// Does link `name` exist in the calling thread's namespace?
pub fn link_exists(name: &str) -> Result<bool, Error> {
    check_ifname(name)?;
    netlink(|h| async move { Ok(get_link(&h, name).await?.is_some()) })
}

/// The sysctl key of an interface setting, in the slash form that keeps dots in interface
/// names: `conf_key("ipv4", "br.0", "route_localnet")` is `net/ipv4/conf/br.0/route_localnet`.
pub fn conf_key(family: &str, ifname: &str, setting: &str) -> String {
    format!("net/{family}/conf/{ifname}/{setting}")
}

/// Reads a `net.*` sysctl of the calling thread's namespace, without the trailing newline.
///
/// Keys are dotted (`net.ipv4.ip_forward`) or, as sysctl(8) also accepts, slash-separated
/// (`net/ipv4/conf/eth0.100/route_localnet`), which is the form for interface names with dots.
pub fn sysctl_get(key: &str) -> Result<String, Error> {
    let path = sysctl_path(key)?;
    let value = fs::read_to_string(&path).map_err(|source| Error::SysctlRead {
        key: key.to_string(),
        source,
    })?;
    Ok(value.trim_end_matches('\n').to_string())
}

/// Writes a `net.*` sysctl of the calling thread's namespace (key forms as [`sysctl_get`]).
///
/// `/proc/sys/net` shows the namespace of the thread that opens it, so this must run on a
/// thread inside the target namespace (see `netns::run_in`).
pub fn sysctl_set(key: &str, value: &str) -> Result<(), Error> {
    let path = sysctl_path(key)?;
    let write_err = |source| Error::SysctlWrite {
        key: key.to_string(),
        value: value.to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(value.as_bytes()).map_err(write_err)
}

/// `/proc/sys/...` for a key; only `net.*`, the per-namespace part: other sysctls are global
/// and gearnat has no business changing them.
fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    let bad = |reason| Error::SysctlKey {
        key: key.to_string(),
        reason,
    };
    let separator = if key.contains('/') { '/' } else { '.' };
    let components: Vec<&str> = key.split(separator).collect();
    if components.len() < 2 || components[0] != "net" {
        return Err(bad("not under net"));
    }
    if components
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0'))
    {
        return Err(bad("empty or relative path component"));
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(components);
    Ok(path)
}

/// Ports that sockets of the calling thread's namespace listen on: TCP sockets in LISTEN state,
/// or bound UDP sockets, over IPv4 and IPv6.
///
/// Asked of sock_diag (<linux/inet_diag.h>); `/proc/net/tcp` is the fallback where the diag
/// modules are missing. For LISTEN alone the kernel walks only the listening hash, whereas each
/// read of `/proc/net/tcp` walks the whole established hash, which all namespaces share (about
/// 10 ms for tcp and tcp6 on a 2-core test machine, on every apply).
pub fn listening_ports(proto: Proto) -> Result<BTreeSet<u16>, Error> {
    match diag_listening_ports(proto) {
        Ok(ports) => Ok(ports),
        Err(e) => {
            log::debug!("sock_diag for {proto} sockets: {e}; reading /proc/net instead");
            proc_listening_ports(proto)
        }
    }
}

/// SOCK_DIAG_BY_FAMILY (<linux/sock_diag.h>).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// TCP_LISTEN in include/net/tcp_states.h.
const TCP_LISTEN: u8 = 0x0a;

fn diag_listening_ports(proto: Proto) -> io::Result<BTreeSet<u16>> {
    let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
    let kernel = netlink_sys::SocketAddr::new(0, 0);
    let (protocol, states) = match proto {
        Proto::Tcp => (libc::IPPROTO_TCP, 1u32 << TCP_LISTEN),
        Proto::Udp => (libc::IPPROTO_UDP, u32::MAX),
    };
    let mut ports = BTreeSet::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        socket.send_to(&diag_request(family, protocol, states), &kernel, 0)?;
        loop {
            let (answers, done) = diag_answers(&socket.recv_from_full()?.0)?;
            let bound = answers.into_iter().filter(|(state, port)| {
                *port != 0 && (proto == Proto::Udp || *state == TCP_LISTEN)
            });
            ports.extend(bound.map(|(_, port)| port));
            if done {
                break;
            }
        }
    }
    Ok(ports)
}

/// A dump request: nlmsghdr, then inet_diag_req_v2 (family, protocol, extensions, pad, states,
/// and an all-zero inet_diag_sockid, which matches every socket).
fn diag_request(family: i32, protocol: i32, states: u32) -> Vec<u8> {
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const REQUEST_LEN: u32 = 16 + 8 + 48;
    let mut request = Vec::with_capacity(REQUEST_LEN as usize);
    request.extend(REQUEST_LEN.to_ne_bytes());
    request.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend(1u32.to_ne_bytes()); // sequence number
    request.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    request.extend([family as u8, protocol as u8, 0, 0]);
    request.extend(states.to_ne_bytes());
    request.extend([0u8; 48]);
    request
}

/// (state, local port) of each socket in one datagram of a sock_diag dump, and whether the
/// dump ended in it. Each answer is an inet_diag_msg: family, state, timer, retransmits, then
/// the socket id, whose first field is the local port in network byte order.
fn diag_answers(datagram: &[u8]) -> io::Result<(Vec<(u8, u16)>, bool)> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let bad = || io::Error::other("malformed sock_diag answer");
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        if len < 16 || len > rest.len() {
            return Err(bad());
        }
        let body = &rest[16..len];
        match kind {
            NLMSG_DONE | NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                if errno < 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                return Ok((out, true));
            }
            SOCK_DIAG_BY_FAMILY => {
                let port = body.get(4..6).ok_or_else(bad)?;
                out.push((body[1], u16::from_be_bytes([port[0], port[1]])));
            }
            _ => {}
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok((out, false))
}

/// [`listening_ports`] from `/proc/thread-self/net/{tcp,udp}{,6}`.
fn proc_listening_ports(proto: Proto) -> Result<BTreeSet<u16>, Error> {
    // /proc/thread-self/net, not /proc/self/net: the latter shows the main thread's namespace.
    let files: [&str; 2] = match proto {
        Proto::Tcp => ["tcp", "tcp6"],
        Proto::Udp => ["udp", "udp6"],
    };
    let mut ports = BTreeSet::new();
    for file in files {
        let path = PathBuf::from("/proc/thread-self/net").join(file);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // No tcp6/udp6 when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::ReadProc { path, source }),
        };
        for line in text.lines().skip(1) {
            let parsed = parse_socket_line(line).ok_or_else(|| Error::ParseProc {
                path: path.clone(),
                line: line.to_string(),
            })?;
            if let Some(port) = parsed.listening_port(proto) {
                ports.insert(port);
            }
        }
    }
    Ok(ports)
}

/// The fields of a `/proc/net/{tcp,udp}{,6}` line that matter here.
struct SocketLine {
    local_port: u16,
    state: u8,
}

impl SocketLine {
    fn listening_port(&self, proto: Proto) -> Option<u16> {
        let listening = match proto {
            Proto::Tcp => self.state == TCP_LISTEN,
            Proto::Udp => self.local_port != 0,
        };
        listening.then_some(self.local_port)
    }
}

/// `sl local_address rem_address st ...`, addresses as `HEXADDR:HEXPORT`.
fn parse_socket_line(line: &str) -> Option<SocketLine> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    let (_, port) = local.rsplit_once(':')?;
    Some(SocketLine {
        local_port: u16::from_str_radix(port, 16).ok()?,
        state: u8::from_str_radix(state, 16).ok()?,
    })
}

fn check_ifname(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > IFNAME_MAX {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "a directory name"
    } else if name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        "contains '/', ':', NUL or white space"
    } else {
        return Ok(());
    };
    Err(Error::InvalidIfname {
        name: name.to_string(),
        reason,
    })
}

/// Runs `f` with a netlink handle opened in the calling thread's namespace.
fn netlink<T, F, Fut>(f: F) -> Result<T, Error>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    thread_local! {
        /// One runtime per thread, made on its first request: observing reads each instance
        /// on a thread that takes one after another, and making a runtime for each costs
        /// more than the requests.
        static RUNTIME: std::cell::OnceCell<tokio::runtime::Runtime> =
            const { std::cell::OnceCell::new() };
    }
    RUNTIME.with(|runtime| {
        let runtime = match runtime.get() {
            Some(runtime) => runtime,
            None => {
                let made = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(Error::Runtime)?;
                runtime.get_or_init(|| made)
            }
        };
        runtime.block_on(async {
            // The socket is made here, in the calling thread's namespace now.
            let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
            let driver = tokio::spawn(connection);
            let result = f(handle).await;
            driver.abort();
            result
        })
    })
}

async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    let mut links = h.link().get().match_name(name).execute();
    match links.try_next().await.map_err(NetlinkError::from) {
        Ok(link) => Ok(link),
        Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
        Err(source) => Err(Error::GetLink {
            name: name.to_string(),
            source,
        }),
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

fn expect_kind(link: &LinkMessage, name: &str, wanted: InfoKind) -> Result<(), Error> {
    match link_kind(link) {
        Some(kind) if *kind == wanted => Ok(()),
        other => Err(Error::WrongKind {
            name: name.to_string(),
            actual: other.map_or_else(|| "plain".to_string(), |k| k.to_string()),
            wanted: if wanted == InfoKind::Bridge {
                "bridge"
            } else {
                "veth"
            },
        }),
    }
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Whether a bridge port reflects frames back out of the port they came in on.
fn hairpin(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|info| match info {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => port
                .iter()
                .any(|p| matches!(p, InfoBridgePort::HairpinMode(true))),
            _ => false,
        }),
        _ => false,
    })
}

fn link_netnsid(link: &LinkMessage) -> Option<i32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    })
}

/// Sets the link up. Returns whether it was down (in check mode: would be set up).
async fn ensure_up(h: &Handle, link: &LinkMessage, name: &str, mode: Mode) -> Result<bool, Error> {
    if link.header.flags.contains(LinkFlags::Up) {
        return Ok(false);
    }
    if mode == Mode::Apply {
        let message = LinkUnspec::new_with_index(link.header.index).up().build();
        h.link()
            .set(message)
            .execute()
            .await
            .map_err(|e| Error::SetUp {
                name: name.to_string(),
                source: e.into(),
            })?;
    }
    Ok(true)
}

fn ipv4_address(message: &AddressMessage) -> Option<Ipv4Net> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point
    // links and equal to IFA_LOCAL elsewhere.
    let local = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(IpAddr::V4(addr)) => Some(*addr),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(IpAddr::V4(addr)) => Some(*addr),
        _ => None,
    });
    Some(Ipv4Net {
        addr: local.or(address)?,
        prefix: message.header.prefix_len,
    })
}

/// Ensures `address` is on link `index`; with `exclusive`, removes its other IPv4 addresses.
/// Returns whether anything changed (in check mode: would change).
async fn ensure_address(
    h: &Handle,
    index: u32,
    name: &str,
    address: Ipv4Net,
    exclusive: bool,
    mode: Mode,
) -> Result<bool, Error> {
    let current: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_filter(|m| futures::future::ready(m.header.family == AddressFamily::Inet))
        .try_collect()
        .await
        .map_err(|e| Error::GetAddresses {
            name: name.to_string(),
            source: e.into(),
        })?;
    let mut changed = false;
    let mut present = false;
    for message in current {
        let Some(have) = ipv4_address(&message) else {
            continue;
        };
        if have.addr == address.addr && have.prefix == address.prefix {
            present = true;
        } else if exclusive {
            changed = true;
            if mode == Mode::Apply {
                h.address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(|e| Error::DeleteAddress {
                        name: name.to_string(),
                        address: format!("{}/{}", have.addr, have.prefix),
                        source: e.into(),
                    })?;
            }
        }
    }
    if !present {
        changed = true;
        if mode == Mode::Apply {
            h.address()
                .add(index, IpAddr::V4(address.addr), address.prefix)
                .execute()
                .await
                .map_err(|e| Error::AddAddress {
                    name: name.to_string(),
                    address: format!("{}/{}", address.addr, address.prefix),
                    source: e.into(),
                })?;
        }
    }
    Ok(changed)
}

/// Ensures the main table's IPv4 default route goes via `gateway` on link `index`.
async fn ensure_default_route(
    h: &Handle,
    index: u32,
    name: &str,
    gateway: Ipv4Addr,
    mode: Mode,
) -> Result<bool, Error> {
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::GetRoutes { source: e.into() })?;
    let in_main = |route: &RouteMessage| {
        let table = route.attributes.iter().find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        });
        table.unwrap_or(u32::from(route.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
    };
    let default = routes
        .iter()
        .find(|r| r.header.destination_prefix_length == 0 && in_main(r));
    if let Some(route) = default {
        let via = route.attributes.iter().find_map(|attr| match attr {
            RouteAttribute::Gateway(RouteAddress::Inet(addr)) => Some(*addr),
            _ => None,
        });
        let oif = route.attributes.iter().find_map(|attr| match attr {
            RouteAttribute::Oif(oif) => Some(*oif),
            _ => None,
        });
        if via == Some(gateway) && oif == Some(index) {
            return Ok(false);
        }
    }
    if mode == Mode::Apply {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::SetRoute {
                name: name.to_string(),
                gateway,
                source: e.into(),
            })?;
    }
    Ok(true)
}

/// The steps of [`ensure_bridge`]; returns whether anything changed (or would).
async fn bridge(h: Handle, name: &str, gateway: Ipv4Net, mode: Mode) -> Result<bool, Error> {
    let mut changed = false;
    let link = match get_link(&h, name).await? {
        Some(link) => link,
        None if mode == Mode::Check => return Ok(true),
        None => {
            log::info!("creating bridge {name}");
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(|e| Error::CreateBridge {
                    name: name.to_string(),
                    source: e.into(),
                })?;
            changed = true;
            get_link(&h, name).await?.ok_or_else(|| Error::NoBridge {
                name: name.to_string(),
            })?
        }
    };
    expect_kind(&link, name, InfoKind::Bridge)?;
    changed |= ensure_up(&h, &link, name, mode).await?;
    changed |= ensure_address(&h, link.header.index, name, gateway, false, mode).await?;
    Ok(changed)
}

/// An instance's veth pair as [`ensure_veth`] makes it: `host_if` on `bridge` in the host,
/// its peer `inner_if` in `instance` with `address` and a default route via `gateway`.
pub struct Veth<'a> {
    pub host_if: &'a str,
    pub bridge: &'a str,
    pub instance: &'a Netns,
    pub inner_if: &'a str,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Veth<'_> {
    /// Is the inner end as [`ensure_veth`] leaves it? Call from a thread inside the instance.
    pub fn inner_in_place(&self) -> Result<bool, Error> {
        self.check_names()?;
        Ok(!netlink(|h| self.inner_side(h, Mode::Check))?)
    }

    fn check_names(&self) -> Result<(), Error> {
        check_ifname(self.host_if)?;
        check_ifname(self.bridge)?;
        check_ifname(self.inner_if)
    }

    /// The host end: exists with its peer in the instance, attached to the bridge, up.
    async fn host_side(&self, h: Handle, mode: Mode) -> Result<bool, Error> {
        let bridge = match get_link(&h, self.bridge).await? {
            Some(bridge) => bridge,
            // For `diff` on a fresh host: everything is still to be done, which is no error.
            None if mode == Mode::Check => return Ok(true),
            None => {
                return Err(Error::NoBridge {
                    name: self.bridge.to_string(),
                })
            }
        };
        let mut changed = false;
        let mut link = get_link(&h, self.host_if).await?;
        if let Some(existing) = &link {
            expect_kind(existing, self.host_if, InfoKind::Veth)?;
            if !self.peer_in_instance(&h, existing).await? {
                if mode == Mode::Check {
                    return Ok(true);
                }
                log::info!(
                    "replacing {}: its peer is not in {}",
                    self.host_if,
                    self.instance.name()
                );
                h.link()
                    .del(existing.header.index)
                    .execute()
                    .await
                    .map_err(|e| Error::DeleteLink {
                        name: self.host_if.to_string(),
                        source: e.into(),
                    })?;
                link = None;
                changed = true;
            }
        }
        let link = match link {
            Some(link) => link,
            None if mode == Mode::Check => return Ok(true),
            None => {
                self.create(&h, bridge.header.index).await?;
                changed = true;
                get_link(&h, self.host_if)
                    .await?
                    .ok_or_else(|| Error::NoPeer {
                        host_if: self.host_if.to_string(),
                        inner_if: self.inner_if.to_string(),
                        instance: self.instance.name().to_string(),
                    })?
            }
        };
        if controller(&link) != Some(bridge.header.index) {
            changed = true;
            if mode == Mode::Apply {
                let message =
                    LinkUnspec::new_with_index(link.header.index).controller(bridge.header.index);
                h.link()
                    .set(message.build())
                    .execute()
                    .await
                    .map_err(|e| Error::Attach {
                        name: self.host_if.to_string(),
                        bridge: self.bridge.to_string(),
                        source: e.into(),
                    })?;
            }
        }
        changed |= self.ensure_hairpin(&h, &link, mode).await?;
        changed |= ensure_up(&h, &link, self.host_if, mode).await?;
        Ok(changed)
    }

    /// Hairpin mode on the bridge port: an instance reaching its own public port through the
    /// host gets the DNATed packet back through the port it came in on. With
    /// `bridge-nf-call-iptables=1`, br_netfilter DNATs such a packet at the bridge and forwards
    /// it as a bridged frame, which the bridge drops without hairpin mode.
    async fn ensure_hairpin(
        &self,
        h: &Handle,
        link: &LinkMessage,
        mode: Mode,
    ) -> Result<bool, Error> {
        if hairpin(link) {
            return Ok(false);
        }
        if mode == Mode::Apply {
            let mut message = LinkMessage::default();
            message.header.index = link.header.index;
            message.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]));
            // RTM_SETLINK ignores bridge port attributes; they go in RTM_NEWLINK.
            h.link()
                .set_port(message)
                .execute()
                .await
                .map_err(|e| Error::Attach {
                    name: self.host_if.to_string(),
                    bridge: self.bridge.to_string(),
                    source: e.into(),
                })?;
        }
        Ok(true)
    }

    /// Creates the pair with the peer made straight inside the instance (by namespace fd), so
    /// it never appears in the host namespace under its inner name. The host end is made on
    /// the bridge and up in the same request (rtnl_newlink sets the controller and flags of a
    /// device it creates): two fewer requests under rtnl for each new instance, whose wiring
    /// other instances wait behind. Not the peer's flags: veth_newlink brings the peer up
    /// before the pair is tied, and veth_open fails that with ENOTCONN.
    async fn create(&self, h: &Handle, bridge_index: u32) -> Result<(), Error> {
        log::info!(
            "creating veth {} for {}",
            self.host_if,
            self.instance.name()
        );
        let peer = LinkUnspec::new_with_name(self.inner_if)
            .setns_by_fd(self.instance.as_fd().as_raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(self.host_if.to_string())
            .controller(bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(message)
            .execute()
            .await
            .map_err(|e| Error::CreateVeth {
                host_if: self.host_if.to_string(),
                instance: self.instance.name().to_string(),
                source: e.into(),
            })
    }

    /// Is the peer of `link` in the instance's namespace? Compares the peer's namespace id
    /// (IFLA_LINK_NETNSID, which the kernel assigns when it reports a cross-namespace peer)
    /// with the id this namespace has for the instance (RTM_GETNSID by fd).
    async fn peer_in_instance(&self, h: &Handle, link: &LinkMessage) -> Result<bool, Error> {
        let Some(peer_nsid) = link_netnsid(link) else {
            return Ok(false);
        };
        let mut message = NsidMessage::default();
        message
            .attributes
            .push(NsidAttribute::Fd(self.instance.as_fd().as_raw_fd() as u32));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let nsid_err = |source: rtnetlink::Error| Error::GetNsid {
            instance: self.instance.name().to_string(),
            source: source.into(),
        };
        let mut responses = h.clone().request(request).map_err(nsid_err)?;
        let mut instance_nsid = None;
        while let Some(response) = futures::StreamExt::next(&mut responses).await {
            match response.payload {
                NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                    return Err(nsid_err(rtnetlink::Error::NetlinkError(e)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(answer)) => {
                    instance_nsid = answer.attributes.iter().find_map(|attr| match attr {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(instance_nsid == Some(peer_nsid))
    }

    /// Inside the instance: `lo` up, the inner end up with only its address, default route.
    async fn inner_side(&self, h: Handle, mode: Mode) -> Result<bool, Error> {
        let mut changed = false;
        if let Some(lo) = get_link(&h, "lo").await? {
            changed |= ensure_up(&h, &lo, "lo", mode).await?;
        }
        let Some(inner) = get_link(&h, self.inner_if).await? else {
            if mode == Mode::Check {
                return Ok(true);
            }
            return Err(Error::NoPeer {
                host_if: self.host_if.to_string(),
                inner_if: self.inner_if.to_string(),
                instance: self.instance.name().to_string(),
            });
        };
        let index = inner.header.index;
        // Up before the address: IPv4 adds the subnet route only on an up link, and the default
        // route needs it to reach the gateway.
        changed |= ensure_up(&h, &inner, self.inner_if, mode).await?;
        changed |= ensure_address(&h, index, self.inner_if, self.address, true, mode).await?;
        changed |= ensure_default_route(&h, index, self.inner_if, self.gateway, mode).await?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn host_ifnames_are_stable_and_short() {
        // Pinned: a change here renames every existing host interface.
        assert_eq!(host_ifname("mongodb-1"), "gn65d4261b762a8");
        let name = host_ifname("a-very-long-instance-identifier-for-a-container-42");
        assert_eq!(name.len(), IFNAME_MAX);
        assert!(name.starts_with("gn"));
        assert_ne!(host_ifname("mongodb-1"), host_ifname("mongodb-2"));
        assert!(check_ifname(&host_ifname("")).is_ok());
    }

    #[test]
    fn sysctl_keys_keep_dots_in_slash_form() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.gearnat0.route_localnet").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/gearnat0/route_localnet")
        );
        assert_eq!(
            sysctl_path(&conf_key("ipv4", "eth0.100", "route_localnet")).unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/route_localnet")
        );
        for bad in [
            "kernel.hostname",
            "net",
            "net..ipv4",
            "net/ipv4/../../kernel/x",
            "net/",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sock_diag_answers_and_their_end_in_one_datagram() {
        let mut datagram = Vec::new();
        // One inet_diag_msg (72 bytes) for a socket listening on port 8080, then NLMSG_DONE.
        datagram.extend(88u32.to_ne_bytes());
        datagram.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        datagram.extend([0u8; 10]);
        let mut body = vec![libc::AF_INET as u8, TCP_LISTEN, 0, 0];
        body.extend(8080u16.to_be_bytes());
        body.resize(72, 0);
        datagram.extend(body);
        datagram.extend(20u32.to_ne_bytes());
        datagram.extend(3u16.to_ne_bytes());
        datagram.extend([0u8; 14]);
        assert_eq!(
            diag_answers(&datagram).unwrap(),
            (vec![(TCP_LISTEN, 8080)], true)
        );
        assert!(diag_answers(&datagram[..40]).is_err());
    }

    #[test]
    fn sock_diag_and_proc_see_the_same_listeners() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0")
            .or_else(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let (tcp_port, udp_port) = (
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        );
        let diag_tcp = diag_listening_ports(Proto::Tcp).unwrap();
        let diag_udp = diag_listening_ports(Proto::Udp).unwrap();
        assert!(diag_tcp.contains(&tcp_port));
        assert!(diag_udp.contains(&udp_port));
        assert!(proc_listening_ports(Proto::Tcp)
            .unwrap()
            .contains(&tcp_port));
        assert!(proc_listening_ports(Proto::Udp)
            .unwrap()
            .contains(&udp_port));
    }

    #[test]
    fn socket_lines_parse() {
        let tcp =
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1";
        let line = parse_socket_line(tcp).unwrap();
        assert_eq!(line.listening_port(Proto::Tcp), Some(8080));
        let established =
            "   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000 0 0 2";
        assert_eq!(
            parse_socket_line(established)
                .unwrap()
                .listening_port(Proto::Tcp),
            None
        );
        let udp6 = "  5: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 3 2 0";
        assert_eq!(
            parse_socket_line(udp6).unwrap().listening_port(Proto::Udp),
            Some(53)
        );
        assert!(parse_socket_line("garbage").is_none());
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("gearnat0").is_ok());
        assert!(check_ifname("eth0.100").is_ok());
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
