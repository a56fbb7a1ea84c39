//! gearnat's table as nf_tables objects: maps, chains and the expressions of every rule.
//!
//! This is the same ruleset as `render` writes in nft syntax, spelled the way the kernel stores
//! it. Every expression, register and set attribute below is what nft 1.0.6 sends for the nft
//! text (seen with `nft --debug=netlink,mnl -f`), so that `nft list` prints a table gearnat wrote
//! exactly like one nft loaded. The golden test in `tests` holds the two together.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::udata;
use crate::model::Proto;
use crate::ruleset::{Element, Ipv4Net, Layout};

// Values from <linux/netfilter/nf_tables.h>, <linux/netfilter.h> and <linux/rtnetlink.h>.
pub(crate) const NFPROTO_IPV4: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
pub(crate) const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
pub(crate) const NF_DROP: u32 = 0;
pub(crate) const NF_ACCEPT: u32 = 1;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
pub(crate) const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
/// The second 32-bit word of register 1: where a concatenation's port lands.
const NFT_REG32_01: u32 = 9;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_IIF: u32 = 4;
const NFT_META_OIF: u32 = 5;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
/// NF_CT_STATE_INVALID_BIT and NF_CT_STATE_BIT(IP_CT_NEW) of <linux/netfilter/nf_conntrack_common.h>:
/// `ct state invalid,new`.
const CT_STATE_INVALID_NEW: u32 = 1 | 8;
pub(crate) const NFT_NAT_DNAT: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
/// IPS_DST_NAT_BIT of <linux/netfilter/nf_conntrack_common.h>: `ct status dnat`.
const IPS_DST_NAT: u32 = 1 << 5;
/// `lo` is created first in every network namespace, so it is ifindex 1 everywhere.
const LOOPBACK_IFINDEX: u32 = 1;
/// Byte offsets of the IPv4 source and destination addresses, and of the TCP/UDP destination port.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
const L4_DPORT: u32 = 2;

// nft's datatype numbers (nft's include/datatype.h); a concatenation's type packs its members'
// types 6 bits apiece.
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;
const ADDR_PORT_TYPE: u32 = (TYPE_IPADDR << TYPE_BITS) | TYPE_INET_SERVICE;

/// One nf_tables expression, with the registers nft allocates for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Lookup {
        sreg: u32,
        dreg: u32,
        set: &'static str,
        set_id: u32,
    },
    /// IPv4 DNAT to the address in `addr_reg` and the port in `proto_reg`.
    Dnat {
        addr_reg: u32,
        proto_reg: u32,
    },
    Masquerade,
    /// An `immediate` verdict.
    Verdict {
        code: u32,
    },
}

/// A base chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: u32,
    pub priority: i32,
    pub rules: Vec<Vec<Expr>>,
}

/// A named map: key and data types and lengths as nft declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Map {
    pub name: &'static str,
    /// Batch-local id the rules' lookups refer to, as nft numbers its sets.
    pub id: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data_type: u32,
    pub data_len: u32,
    /// nft's set userdata: byte orders and type hints that make `nft list` print the types.
    pub userdata: Vec<u8>,
    /// The most elements the map may hold (NFTA_SET_DESC_SIZE), when it is bounded.
    pub size: Option<u32>,
}

/// The fixed part of gearnat's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub comment: String,
    pub maps: Vec<Map>,
    pub chains: Vec<Chain>,
}

/// The map an element belongs in: it follows from the element's kind and protocol.
pub(crate) fn map_name(element: &Element) -> &'static str {
    match element {
        Element::Port { proto, .. } => Layout::Host { pool: ANY_NET }.map_name(*proto),
        Element::Link { proto, .. } => Layout::Instance.map_name(*proto),
    }
}

const ANY_NET: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::UNSPECIFIED,
    prefix: 0,
};

/// The key or the data of an element of one of gearnat's maps, as the kernel stores it: 2 bytes
/// (a port) or 8 (an address and a port), kept inline, since a batch holds tens of thousands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ElementValueBytes {
    len: u8,
    bytes: [u8; 8],
}

impl ElementValueBytes {
    /// `bytes`, which must be at most 8 long.
    pub fn new(bytes: &[u8]) -> ElementValueBytes {
        assert!(
            bytes.len() <= 8,
            "an element value of {} bytes",
            bytes.len()
        );
        let mut value = ElementValueBytes {
            len: bytes.len() as u8,
            bytes: [0; 8],
        };
        value.bytes[..bytes.len()].copy_from_slice(bytes);
        value
    }
}

impl std::ops::Deref for ElementValueBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Key and data of a map element, as the kernel stores them (network byte order; a port in a
/// concatenation takes a whole 32-bit register word).
pub(crate) fn element_key_data(element: &Element) -> (ElementValueBytes, ElementValueBytes) {
    match element {
        Element::Port {
            host_port, target, ..
        } => (
            ElementValueBytes::new(&host_port.to_be_bytes()),
            addr_port_bytes(target),
        ),
        Element::Link { dial, via, .. } => (addr_port_bytes(dial), addr_port_bytes(via)),
    }
}

fn addr_port_bytes(addr: &SocketAddrV4) -> ElementValueBytes {
    let [a, b, c, d] = addr.ip().octets();
    let [hi, lo] = addr.port().to_be_bytes();
    ElementValueBytes::new(&[a, b, c, d, hi, lo, 0, 0])
}

/// The inverse of [`element_key_data`] for one of gearnat's maps; `None` when the map is not
/// one of them or the bytes do not have its shape.
pub(crate) fn parse_element(map: &str, key: &[u8], data: &[u8]) -> Option<ElementValue> {
    let (kind, proto) = match map {
        "tcp_ports" => (MapKind::Ports, Proto::Tcp),
        "udp_ports" => (MapKind::Ports, Proto::Udp),
        "tcp_links" => (MapKind::Links, Proto::Tcp),
        "udp_links" => (MapKind::Links, Proto::Udp),
        _ => return None,
    };
    let data = parse_addr_port(data)?;
    match kind {
        MapKind::Ports => {
            let host_port = u16::from_be_bytes(key.try_into().ok()?);
            Some(ElementValue::Port {
                proto,
                host_port,
                target: data,
            })
        }
        MapKind::Links => Some(ElementValue::Link {
            proto,
            dial: parse_addr_port(key)?,
            via: data,
        }),
    }
}

enum MapKind {
    Ports,
    Links,
}

/// An element's value without its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ElementValue {
    Port {
        proto: Proto,
        host_port: u16,
        target: SocketAddrV4,
    },
    Link {
        proto: Proto,
        dial: SocketAddrV4,
        via: SocketAddrV4,
    },
}

fn parse_addr_port(bytes: &[u8]) -> Option<SocketAddrV4> {
    let bytes: [u8; 8] = bytes.try_into().ok()?;
    let addr = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    Some(SocketAddrV4::new(
        addr,
        u16::from_be_bytes([bytes[4], bytes[5]]),
    ))
}

/// The key and data shape (lengths) a gearnat map must have for its elements to be read.
pub(crate) fn map_shape(map: &str) -> Option<(u32, u32)> {
    match map {
        "tcp_ports" | "udp_ports" => Some((2, 8)),
        "tcp_links" | "udp_links" => Some((8, 8)),
        _ => None,
    }
}

/// All map names gearnat uses, in any layout.
pub(crate) const MAP_NAMES: [&str; 4] = ["tcp_ports", "udp_ports", "tcp_links", "udp_links"];

/// The fixed part of the table for `layout`.
pub(crate) fn table(layout: &Layout) -> Table {
    let maps: Vec<Map> = Proto::ALL
        .iter()
        .zip(1..)
        .map(|(proto, id)| map(layout, layout.map_name(*proto), id))
        .collect();
    let mut chains = vec![guard_chain()];
    match layout {
        Layout::Host { pool } => {
            let dnat_rules = || {
                maps.iter()
                    .zip(Proto::ALL)
                    .map(|(m, p)| port_dnat_rule(m, p))
                    .collect()
            };
            chains.push(nat_chain(
                "prerouting",
                NF_INET_PRE_ROUTING,
                -100,
                dnat_rules(),
            ));
            chains.push(nat_chain("output", NF_INET_LOCAL_OUT, -100, dnat_rules()));
            let rules = vec![
                loopback_masquerade_rule(),
                hairpin_masquerade_rule(pool),
                outbound_masquerade_rule(pool),
            ];
            chains.push(nat_chain("postrouting", NF_INET_POST_ROUTING, 100, rules));
            chains.push(forward_chain(pool));
        }
        Layout::Instance => {
            let rules = maps
                .iter()
                .zip(Proto::ALL)
                .map(|(m, p)| link_dnat_rule(m, p))
                .collect();
            chains.push(nat_chain("output", NF_INET_LOCAL_OUT, -100, rules));
            let rules = vec![loopback_masquerade_rule()];
            chains.push(nat_chain("postrouting", NF_INET_POST_ROUTING, 100, rules));
        }
    }
    Table {
        comment: layout.comment(),
        maps,
        chains,
    }
}

/// The host's maps are keyed by a port, so they can never hold more than 65,536 elements.
/// Declared so, the kernel gives them its fixed-size hash (`nft_set_hash`, whose estimate needs
/// a size, nf_tables_api.c `nft_select_set_ops`) instead of the resizable one: loading 10,000
/// elements commits in about half the time (no rehashing as the table grows), lookups stay
/// O(1), and the bucket array costs 1 MiB of kernel memory per map (131,072 buckets).
pub const PORT_MAP_SIZE: u32 = 65536;

fn map(layout: &Layout, name: &'static str, id: u32) -> Map {
    match layout {
        Layout::Host { .. } => Map {
            name,
            id,
            key_type: TYPE_INET_SERVICE,
            key_len: 2,
            data_type: ADDR_PORT_TYPE,
            data_len: 8,
            userdata: udata::map_userdata(false),
            size: Some(PORT_MAP_SIZE),
        },
        Layout::Instance => Map {
            name,
            id,
            key_type: ADDR_PORT_TYPE,
            key_len: 8,
            data_type: ADDR_PORT_TYPE,
            data_len: 8,
            userdata: udata::map_userdata(true),
            size: None,
        },
    }
}

/// `iif != "lo" ip daddr 127.0.0.0/8 drop`: with route_localnet on, a remote host could
/// otherwise reach services bound to 127.0.0.1 (CVE-2020-8558).
fn guard_chain() -> Chain {
    let rule = vec![
        Expr::Meta {
            key: NFT_META_IIF,
            dreg: NFT_REG_1,
        },
        cmp(NFT_CMP_NEQ, &LOOPBACK_IFINDEX.to_ne_bytes()),
        prefix_payload(IPV4_DADDR, 8),
        cmp(NFT_CMP_EQ, &[127]),
        Expr::Verdict { code: NF_DROP },
    ];
    Chain {
        name: "guard",
        kind: "filter",
        hook: NF_INET_PRE_ROUTING,
        priority: -300,
        rules: vec![rule],
    }
}

/// Only the declared mappings reach the instances from outside: forwarded traffic to the pool
/// that DNAT sent there passes (`ip daddr <pool> ct status dnat accept`), and new connections
/// from outside the pool that were not DNATed are dropped (`ip saddr != <pool> ip daddr <pool>
/// ct state invalid,new drop`). Without it the host, forwarding for the instances, routes
/// anything a neighbour sends to 10.211.0.x:any straight in. Replies and the instances' own
/// connections (ct state established, related) and traffic between instances pass. An accept
/// here does not override a drop in another table on the same hook; `coexist` reports those.
fn forward_chain(pool: &Ipv4Net) -> Chain {
    let mut dnat = prefix_match(IPV4_DADDR, pool, NFT_CMP_EQ);
    dnat.extend(ct_bits(NFT_CT_STATUS, IPS_DST_NAT));
    dnat.push(Expr::Verdict { code: NF_ACCEPT });
    let mut other = prefix_match(IPV4_SADDR, pool, NFT_CMP_NEQ);
    other.extend(prefix_match(IPV4_DADDR, pool, NFT_CMP_EQ));
    other.extend(ct_bits(NFT_CT_STATE, CT_STATE_INVALID_NEW));
    other.push(Expr::Verdict { code: NF_DROP });
    Chain {
        name: "forward",
        kind: "filter",
        hook: NF_INET_FORWARD,
        priority: 0,
        rules: vec![dnat, other],
    }
}

/// Whether a rule of another table, as dumped, is `ct status dnat [counter] accept` (what
/// gearnat asks users to put before their forward drops), written by nft or by iptables-nft
/// (`-m conntrack --ctstate DNAT -j ACCEPT`).
pub(crate) fn is_ct_dnat_accept(exprs: &[super::sys::ExprInfo]) -> bool {
    let exprs: Vec<&super::sys::ExprInfo> = exprs.iter().filter(|e| e.name != "counter").collect();
    let names: Vec<&str> = exprs.iter().map(|e| e.name.as_str()).collect();
    let accepts = exprs.last().is_some_and(|e| e.verdict == Some(NF_ACCEPT));
    let nft = names == ["ct", "bitwise", "cmp", "immediate"]
        && exprs[0].ct_key == Some(NFT_CT_STATUS)
        && exprs[1].mask.as_deref() == Some(&IPS_DST_NAT.to_ne_bytes()[..]);
    let xt = names == ["match", "immediate"]
        && exprs[0]
            .xt_match
            .as_ref()
            .is_some_and(|(name, rev, info)| is_xt_ctstate_dnat(name, *rev, info));
    accepts && (nft || xt)
}

/// `-m conntrack --ctstate DNAT` in struct xt_conntrack_mtinfo3 (<linux/netfilter/xt_conntrack.h>):
/// eight 16-byte addresses and masks, two u32 expiry bounds and five u16 ports come first, then
/// match_flags, invert_flags and state_mask. Only the state is matched, not inverted, and the
/// state is exactly DNAT (1 << (IP_CT_NUMBER + 2)).
fn is_xt_ctstate_dnat(name: &str, rev: u32, info: &[u8]) -> bool {
    const FLAGS_AT: usize = 8 * 16 + 2 * 4 + 5 * 2;
    const XT_CONNTRACK_STATE: u16 = 1;
    const XT_CONNTRACK_STATE_DNAT: u16 = 1 << 7;
    let u16_at = |at: usize| {
        info.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    name == "conntrack"
        && rev == 3
        && u16_at(FLAGS_AT) == Some(XT_CONNTRACK_STATE)
        && u16_at(FLAGS_AT + 2) == Some(0)
        && u16_at(FLAGS_AT + 4) == Some(XT_CONNTRACK_STATE_DNAT)
}

/// Whether a rule ends in a drop verdict or a reject.
pub(crate) fn ends_in_drop(exprs: &[super::sys::ExprInfo]) -> bool {
    exprs
        .last()
        .is_some_and(|e| e.name == "reject" || e.verdict == Some(NF_DROP))
}

/// `ct <key> <bits>`: any of `bits` set in the conntrack field `key`.
fn ct_bits(key: u32, bits: u32) -> [Expr; 3] {
    [
        Expr::Ct {
            key,
            dreg: NFT_REG_1,
        },
        Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(NFT_CMP_NEQ, &[0; 4]),
    ]
}

fn nat_chain(name: &'static str, hook: u32, priority: i32, rules: Vec<Vec<Expr>>) -> Chain {
    Chain {
        name,
        kind: "nat",
        hook,
        priority,
        rules,
    }
}

/// `fib daddr type local dnat ip to <proto> dport map @<map>`.
fn port_dnat_rule(map: &Map, proto: Proto) -> Vec<Expr> {
    let [l4proto, is_proto] = l4proto_is(proto);
    vec![
        Expr::Fib {
            flags: NFTA_FIB_F_DADDR,
            result: NFT_FIB_RESULT_ADDRTYPE,
            dreg: NFT_REG_1,
        },
        cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()),
        l4proto,
        is_proto,
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: L4_DPORT,
            len: 2,
            dreg: NFT_REG_1,
        },
        Expr::Lookup {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            set: map.name,
            set_id: map.id,
        },
        Expr::Dnat {
            addr_reg: NFT_REG_1,
            proto_reg: NFT_REG32_01,
        },
    ]
}

/// `dnat ip to ip daddr . <proto> dport map @<map>`.
fn link_dnat_rule(map: &Map, proto: Proto) -> Vec<Expr> {
    let [l4proto, is_proto] = l4proto_is(proto);
    vec![
        l4proto,
        is_proto,
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: IPV4_DADDR,
            len: 4,
            dreg: NFT_REG_1,
        },
        Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: L4_DPORT,
            len: 2,
            dreg: NFT_REG32_01,
        },
        Expr::Lookup {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            set: map.name,
            set_id: map.id,
        },
        Expr::Dnat {
            addr_reg: NFT_REG_1,
            proto_reg: NFT_REG32_01,
        },
    ]
}

/// `ip saddr 127.0.0.0/8 oif != "lo" ct status dnat masquerade`: a connection to 127.0.0.1
/// that DNAT sends out through another interface still has a loopback source, which the peer
/// cannot answer (and no router forwards); it takes the outgoing interface's address instead.
fn loopback_masquerade_rule() -> Vec<Expr> {
    let mut rule = vec![
        prefix_payload(IPV4_SADDR, 8),
        cmp(NFT_CMP_EQ, &[127]),
        Expr::Meta {
            key: NFT_META_OIF,
            dreg: NFT_REG_1,
        },
        cmp(NFT_CMP_NEQ, &LOOPBACK_IFINDEX.to_ne_bytes()),
    ];
    rule.extend(ct_dnat_masquerade());
    rule
}

/// `ip saddr <pool> ip daddr <pool> ct status dnat masquerade`: hairpin, an instance reaching
/// another (or itself) through a host port; without it the reply bypasses the DNAT.
fn hairpin_masquerade_rule(pool: &Ipv4Net) -> Vec<Expr> {
    let mut rule = prefix_match(IPV4_SADDR, pool, NFT_CMP_EQ);
    rule.extend(prefix_match(IPV4_DADDR, pool, NFT_CMP_EQ));
    rule.extend(ct_dnat_masquerade());
    rule
}

/// `ip saddr <pool> ip daddr != <pool> masquerade`: connections instances open to other hosts
/// leave with the host's address, as from Docker's own bridge; the pool is private to the host
/// and nothing outside routes it back.
fn outbound_masquerade_rule(pool: &Ipv4Net) -> Vec<Expr> {
    let mut rule = prefix_match(IPV4_SADDR, pool, NFT_CMP_EQ);
    rule.extend(prefix_match(IPV4_DADDR, pool, NFT_CMP_NEQ));
    rule.push(Expr::Masquerade);
    rule
}

fn ct_dnat_masquerade() -> Vec<Expr> {
    let mut rule = ct_bits(NFT_CT_STATUS, IPS_DST_NAT).to_vec();
    rule.push(Expr::Masquerade);
    rule
}

fn l4proto_is(proto: Proto) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_L4PROTO,
            dreg: NFT_REG_1,
        },
        cmp(NFT_CMP_EQ, &[proto.number()]),
    ]
}

/// `ip saddr|daddr [!=] <net>` the way nft linearizes it (`op` is NFT_CMP_EQ or NFT_CMP_NEQ): a
/// whole-byte prefix loads and compares only those bytes; any other prefix loads the address,
/// masks it and compares it.
fn prefix_match(offset: u32, net: &Ipv4Net, op: u32) -> Vec<Expr> {
    let network = net.network().octets();
    if net.prefix > 0 && net.prefix % 8 == 0 {
        let len = usize::from(net.prefix / 8);
        return vec![prefix_payload(offset, net.prefix), cmp(op, &network[..len])];
    }
    vec![
        prefix_payload(offset, 32),
        Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            mask: net.mask().octets().to_vec(),
            xor: vec![0; 4],
        },
        cmp(op, &network),
    ]
}

/// Loads the bytes of an IPv4 address that a whole-byte prefix of `prefix` bits covers.
fn prefix_payload(offset: u32, prefix: u8) -> Expr {
    let len = u32::from(prefix).div_ceil(8);
    Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len,
        dreg: NFT_REG_1,
    }
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data: data.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Owner;

    fn owner() -> Owner {
        Owner {
            deployment: "seed".into(),
            instance: "rockmongo-1".into(),
        }
    }

    #[test]
    fn port_element_bytes_round_trip() {
        let element = Element::Port {
            proto: Proto::Tcp,
            host_port: 6060,
            target: "10.211.0.2:80".parse().unwrap(),
            owner: owner(),
        };
        let (key, data) = element_key_data(&element);
        // As nft's debug output shows them: `element 0000ac17 : 0200d30a 00005000`.
        assert_eq!(*key, [0x17, 0xac]);
        assert_eq!(*data, [10, 211, 0, 2, 0, 80, 0, 0]);
        let value = parse_element("tcp_ports", &key, &data).unwrap();
        let target = "10.211.0.2:80".parse().unwrap();
        assert_eq!(
            value,
            ElementValue::Port {
                proto: Proto::Tcp,
                host_port: 6060,
                target
            }
        );
    }

    #[test]
    fn link_element_bytes_round_trip() {
        let dial: SocketAddrV4 = "127.0.0.1:27017".parse().unwrap();
        let via: SocketAddrV4 = "10.211.0.1:4000".parse().unwrap();
        let element = Element::Link {
            proto: Proto::Udp,
            dial,
            via,
            owner: owner(),
        };
        assert_eq!(map_name(&element), "udp_links");
        let (key, data) = element_key_data(&element);
        assert_eq!(*key, [127, 0, 0, 1, 0x69, 0x89, 0, 0]);
        let value = parse_element("udp_links", &key, &data).unwrap();
        assert_eq!(
            value,
            ElementValue::Link {
                proto: Proto::Udp,
                dial,
                via
            }
        );
        assert_eq!(parse_element("tcp_ports", &key, &data), None);
    }

    #[test]
    fn prefixes_linearize_like_nft() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        // Whole bytes: payload of prefix/8 bytes, no mask.
        let rule = prefix_match(IPV4_SADDR, &net("10.211.0.0/16"), NFT_CMP_EQ);
        assert_eq!(rule.len(), 2);
        assert_eq!(rule[1], cmp(NFT_CMP_EQ, &[10, 211]));
        // Otherwise: 4 bytes, mask, compare.
        let rule = prefix_match(IPV4_DADDR, &net("10.211.16.0/20"), NFT_CMP_EQ);
        assert_eq!(rule.len(), 3);
        assert_eq!(
            rule[1],
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![255, 255, 240, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(rule[2], cmp(NFT_CMP_EQ, &[10, 211, 16, 0]));
        assert_eq!(
            prefix_match(IPV4_DADDR, &net("0.0.0.0/0"), NFT_CMP_EQ).len(),
            3
        );
    }

    #[test]
    fn dnat_accept_rules_are_recognised_from_nft_and_iptables() {
        use crate::netfilter::sys::ExprInfo;
        let named = |name: &str| ExprInfo {
            name: name.into(),
            ..ExprInfo::default()
        };
        let accept = ExprInfo {
            verdict: Some(NF_ACCEPT),
            ..named("immediate")
        };
        let nft = vec![
            ExprInfo {
                ct_key: Some(NFT_CT_STATUS),
                ..named("ct")
            },
            ExprInfo {
                mask: Some(IPS_DST_NAT.to_ne_bytes().to_vec()),
                ..named("bitwise")
            },
            named("cmp"),
            named("counter"),
            accept.clone(),
        ];
        assert!(is_ct_dnat_accept(&nft));
        let mut snat = nft.clone();
        snat[1].mask = Some(16u32.to_ne_bytes().to_vec());
        assert!(!is_ct_dnat_accept(&snat));

        let mut info = vec![0u8; 160];
        info[146..148].copy_from_slice(&1u16.to_ne_bytes());
        info[150..152].copy_from_slice(&0x80u16.to_ne_bytes());
        let xt = |info: Vec<u8>| ExprInfo {
            xt_match: Some(("conntrack".into(), 3, info)),
            ..named("match")
        };
        assert!(is_ct_dnat_accept(&[xt(info.clone()), accept.clone()]));
        let mut established = info.clone();
        established[150..152].copy_from_slice(&0x6u16.to_ne_bytes());
        assert!(!is_ct_dnat_accept(&[xt(established), accept.clone()]));
        let drop = ExprInfo {
            verdict: Some(NF_DROP),
            ..named("immediate")
        };
        assert!(!is_ct_dnat_accept(&[xt(info), drop.clone()]));
        assert!(ends_in_drop(&[named("cmp"), drop]));
        assert!(ends_in_drop(&[named("reject")]));
        assert!(!ends_in_drop(&nft));
    }

    #[test]
    fn layouts_have_their_chains() {
        let host = table(&Layout::Host {
            pool: "10.211.0.0/16".parse().unwrap(),
        });
        let names: Vec<_> = host.chains.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["guard", "prerouting", "output", "postrouting", "forward"]
        );
        assert_eq!(
            host.maps.iter().map(|m| m.name).collect::<Vec<_>>(),
            ["tcp_ports", "udp_ports"]
        );
        let instance = table(&Layout::Instance);
        let names: Vec<_> = instance.chains.iter().map(|c| c.name).collect();
        assert_eq!(names, ["guard", "output", "postrouting"]);
    }
}
