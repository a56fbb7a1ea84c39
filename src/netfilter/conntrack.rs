//! Deleting the conntrack entries of flows that still lead to a target gearnat no longer maps
//! to, over ctnetlink (nfnetlink subsystem 1, `<linux/netfilter/nfnetlink_conntrack.h>`).
//!
//! Why: NAT is decided on a flow's first packet and stored in its conntrack entry. A UDP client
//! that keeps its source port (a DNS resolver, a syslog sender) keeps that entry alive forever,
//! so after its mapping moves its datagrams keep going to the old target, or into a void. Once
//! the entry is gone, the next datagram is a new flow and meets the new map.
//!
//! The messages are small and fixed, so they are written and read here by hand, in safe code,
//! over the same NETLINK_NETFILTER socket nf_tables uses. The kernel is asked for the whole IPv4
//! table (`IPCTNL_MSG_CT_GET`, dump) and every matching entry is deleted by its original tuple
//! (`IPCTNL_MSG_CT_DELETE`); an entry that vanished in between is no error.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::netlink::{self, Reply, HEADER_LEN, NFGEN_LEN};
use super::sys::{MsgBuf, Socket};
use super::{Error, KernelError};
use crate::model::Proto;
use crate::ruleset::Element;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u8 = 2;
const ENOENT: i32 = 2;
const RECV_BYTES: usize = 128 * 1024;

// enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// IPS_DST_NAT of <linux/netfilter/nf_conntrack_common.h>.
const IPS_DST_NAT: u32 = 1 << 5;

/// One conntrack entry, as far as gearnat looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub orig_src: SocketAddrV4,
    pub orig_dst: SocketAddrV4,
    pub reply_src: SocketAddrV4,
    pub status: u32,
    pub zone: Option<u16>,
}

impl Flow {
    /// Whether this flow still leads to where `element` sent it: for a public port, a DNATed
    /// flow to the host port whose replies come from the old target; for a link, a flow to the
    /// dialed address whose replies come from the old host address and port.
    pub fn leads_to(&self, element: &Element) -> bool {
        if self.proto != element.proto().number() {
            return false;
        }
        match element {
            Element::Port {
                host_port, target, ..
            } => {
                self.status & IPS_DST_NAT != 0
                    && self.orig_dst.port() == *host_port
                    && self.reply_src == *target
            }
            Element::Link { dial, via, .. } => self.orig_dst == *dial && self.reply_src == *via,
        }
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            n => format!("proto {n}"),
        };
        write!(
            f,
            "{proto} {} -> {} (replies from {})",
            self.orig_src, self.orig_dst, self.reply_src
        )
    }
}

/// Deletes, in the calling thread's network namespace, every conntrack entry that still leads
/// where one of `stale` sent it; returns how many went.
pub fn delete_flows(stale: &[Element]) -> Result<usize, Error> {
    if stale.is_empty() {
        return Ok(0);
    }
    let socket = Socket::open().map_err(Error::Socket)?;
    let deleted = delete_flows_on(&socket, stale);
    // Flows go after the batch that dropped their mappings: closing this socket would wait for
    // the kernel to free what that batch removed.
    socket.release();
    deleted
}

fn delete_flows_on(socket: &Socket, stale: &[Element]) -> Result<usize, Error> {
    let doomed: Vec<Flow> = dump_flows(socket)?
        .into_iter()
        .filter(|f| stale.iter().any(|e| f.leads_to(e)))
        .collect();
    let mut deleted = 0;
    for (seq, flow) in (2..).zip(&doomed) {
        match request(socket, &delete_request(flow, seq), seq, |_| Some(())) {
            Ok(()) => {
                deleted += 1;
                log::debug!("deleted conntrack entry {flow}");
            }
            // It timed out or was deleted in between.
            Err(Failure::Kernel(KernelError(ENOENT))) => {}
            Err(f) => {
                return Err(failure(f, |errno| Error::DeleteFlow {
                    flow: flow.to_string(),
                    errno,
                }))
            }
        }
    }
    Ok(deleted)
}

/// Every IPv4 conntrack entry of the namespace.
fn dump_flows(socket: &Socket) -> Result<Vec<Flow>, Error> {
    let mut flows = Vec::new();
    request(socket, &dump_request(1), 1, |payload| {
        if let Some(flow) = parse_flow(payload) {
            flows.push(flow);
        }
        Some(())
    })
    .map_err(|f| failure(f, Error::DumpFlows))?;
    Ok(flows)
}

enum Failure {
    Kernel(KernelError),
    Io(std::io::Error),
    Parse,
}

fn failure(f: Failure, kernel: impl FnOnce(KernelError) -> Error) -> Error {
    match f {
        Failure::Kernel(errno) => kernel(errno),
        Failure::Io(e) => Error::Receive(e),
        Failure::Parse => Error::Parse { what: "conntrack" },
    }
}

/// Sends `message` and hands the attributes of each reply object to `on_reply`, until the
/// acknowledgement or the end of the dump.
fn request(
    socket: &Socket,
    message: &[u8],
    seq: u32,
    mut on_reply: impl FnMut(&[u8]) -> Option<()>,
) -> Result<(), Failure> {
    socket.send(message).map_err(Failure::Io)?;
    let mut buf = MsgBuf::with_capacity(RECV_BYTES);
    loop {
        socket
            .recv(&mut buf, RECV_BYTES, true)
            .map_err(Failure::Io)?;
        for m in netlink::messages(buf.as_bytes()).ok_or(Failure::Parse)? {
            if m.seq != seq {
                continue;
            }
            match m.reply() {
                Reply::Ack | Reply::Done => return Ok(()),
                Reply::Error { errno, .. } => return Err(Failure::Kernel(KernelError(errno))),
                Reply::Data => {
                    let attrs = m
                        .bytes
                        .get(HEADER_LEN + NFGEN_LEN..)
                        .ok_or(Failure::Parse)?;
                    on_reply(attrs).ok_or(Failure::Parse)?;
                }
            }
        }
    }
}

/// A netlink header and nfgenmsg (AF_INET, version 0, resource id 0) followed by `attrs`.
fn message(msg: u16, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + NFGEN_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[AF_INET, 0, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

fn dump_request(seq: u32) -> Vec<u8> {
    message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, &[])
}

/// `IPCTNL_MSG_CT_DELETE` naming the entry by its original tuple (and zone).
fn delete_request(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut ip = Vec::new();
    attr(&mut ip, CTA_IP_V4_SRC, &flow.orig_src.ip().octets());
    attr(&mut ip, CTA_IP_V4_DST, &flow.orig_dst.ip().octets());
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[flow.proto]);
    attr(
        &mut proto,
        CTA_PROTO_SRC_PORT,
        &flow.orig_src.port().to_be_bytes(),
    );
    attr(
        &mut proto,
        CTA_PROTO_DST_PORT,
        &flow.orig_dst.port().to_be_bytes(),
    );
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut attrs = Vec::new();
    attr(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    if let Some(zone) = flow.zone {
        attr(&mut attrs, CTA_ZONE, &zone.to_be_bytes());
    }
    message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, &attrs)
}

/// Appends one attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// An entry's attributes; `None` for one that is not TCP or UDP over IPv4 (ICMP and others
/// have no ports and are not gearnat's business).
fn parse_flow(attrs: &[u8]) -> Option<Flow> {
    let mut orig = None;
    let mut reply = None;
    let mut status = 0;
    let mut zone = None;
    for a in netlink::attributes(attrs)? {
        match a.kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(a.value),
            CTA_TUPLE_REPLY => reply = parse_tuple(a.value),
            CTA_STATUS => status = u32::from_be_bytes(a.value.try_into().ok()?),
            CTA_ZONE => zone = Some(u16::from_be_bytes(a.value.try_into().ok()?)),
            _ => {}
        }
    }
    let (proto, orig_src, orig_dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Flow {
        proto,
        orig_src,
        orig_dst,
        reply_src,
        status,
        zone,
    })
}

/// (protocol, source, destination) of a tuple with IPv4 addresses and ports.
fn parse_tuple(bytes: &[u8]) -> Option<(u8, SocketAddrV4, SocketAddrV4)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for a in netlink::attributes(bytes)? {
        match a.kind {
            CTA_TUPLE_IP => {
                for ip in netlink::attributes(a.value)? {
                    let addr = <[u8; 4]>::try_from(ip.value).ok().map(Ipv4Addr::from);
                    match ip.kind {
                        CTA_IP_V4_SRC => src = addr,
                        CTA_IP_V4_DST => dst = addr,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in netlink::attributes(a.value)? {
                    let port = <[u8; 2]>::try_from(p.value).ok().map(u16::from_be_bytes);
                    match p.kind {
                        CTA_PROTO_NUM => proto = p.value.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto.filter(|p| [Proto::Tcp.number(), Proto::Udp.number()].contains(p))?;
    Some((
        proto,
        SocketAddrV4::new(src?, sport?),
        SocketAddrV4::new(dst?, dport?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Owner;

    fn owner() -> Owner {
        Owner {
            deployment: "seed".into(),
            instance: "dns-1".into(),
        }
    }

    fn flow(orig_dst: &str, reply_src: &str, status: u32) -> Flow {
        Flow {
            proto: 17,
            orig_src: "192.0.2.2:40000".parse().unwrap(),
            orig_dst: orig_dst.parse().unwrap(),
            reply_src: reply_src.parse().unwrap(),
            status,
            zone: None,
        }
    }

    #[test]
    fn a_flow_leads_to_the_target_its_replies_come_from() {
        let port = Element::Port {
            proto: Proto::Udp,
            host_port: 5353,
            target: "10.211.0.2:53".parse().unwrap(),
            owner: owner(),
        };
        assert!(flow("192.0.2.1:5353", "10.211.0.2:53", IPS_DST_NAT).leads_to(&port));
        // Already retargeted, not DNATed, another port, another protocol.
        assert!(!flow("192.0.2.1:5353", "10.211.0.3:53", IPS_DST_NAT).leads_to(&port));
        assert!(!flow("10.211.0.2:53", "10.211.0.2:53", 0).leads_to(&port));
        assert!(!flow("192.0.2.1:5354", "10.211.0.2:53", IPS_DST_NAT).leads_to(&port));
        let tcp = Flow {
            proto: 6,
            ..flow("192.0.2.1:5353", "10.211.0.2:53", IPS_DST_NAT)
        };
        assert!(!tcp.leads_to(&port));

        let link = Element::Link {
            proto: Proto::Udp,
            dial: "127.0.0.1:53".parse().unwrap(),
            via: "10.211.0.1:5353".parse().unwrap(),
            owner: owner(),
        };
        assert!(flow("127.0.0.1:53", "10.211.0.1:5353", IPS_DST_NAT).leads_to(&link));
        assert!(!flow("127.0.0.1:53", "10.211.0.1:4000", IPS_DST_NAT).leads_to(&link));
    }

    #[test]
    fn a_delete_request_parses_back_to_its_flow() {
        let f = Flow {
            zone: Some(3),
            ..flow("192.0.2.1:5353", "10.211.0.2:53", 0)
        };
        let bytes = delete_request(&f, 9);
        let msgs = netlink::messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].kind, msgs[0].seq), (0x0102, 9));
        assert_eq!(msgs[0].flags(), NLM_F_REQUEST | NLM_F_ACK);
        let attrs = &bytes[HEADER_LEN + NFGEN_LEN..];
        // The entry as the kernel would describe it: the same tuple as original and reply.
        let mut dumped = attrs.to_vec();
        let tuple = netlink::attributes(attrs).unwrap()[0].value.to_vec();
        let mut reply = Vec::new();
        attr(&mut reply, CTA_TUPLE_REPLY | NLA_F_NESTED, &tuple);
        dumped.extend(reply);
        let back = parse_flow(&dumped).unwrap();
        assert_eq!(back.orig_src, f.orig_src);
        assert_eq!(back.orig_dst, f.orig_dst);
        assert_eq!((back.proto, back.zone), (17, Some(3)));
    }
}
