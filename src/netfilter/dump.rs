//! Reading gearnat's table back: the table, its maps, their elements, over netlink.
//!
//! These are separate requests, so the ruleset generation is read before and after them: when it
//! moved, something changed the ruleset in between and everything is read again.

use std::collections::HashMap;
use std::io;

use super::netlink::{self, Reply, HEADER_LEN, NFGEN_LEN};
use super::program::{self, ElementValue, NFT_SET_MAP};
use super::sys::{self, MsgBuf, SetInfo, Socket};
use super::udata;
use super::{Error, KernelError};
use crate::ruleset::{ActualTable, Element, Owner, TABLE};

const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const ENOENT: i32 = 2;
const RECV_BYTES: usize = 128 * 1024;
const ATTEMPTS: u32 = 5;

/// Reads gearnat's table (`table ip gearnat`) in the calling thread's network namespace;
/// `Ok(None)` when there is no such table.
pub fn dump() -> Result<Option<ActualTable>, Error> {
    Ok(snapshot()?.0)
}

/// [`dump`], with the ruleset generation the table was read at (see [`commit_on`]).
///
/// [`commit_on`]: super::commit_on
pub fn snapshot() -> Result<(Option<ActualTable>, u32), Error> {
    let mut conn = Connection {
        socket: Socket::open().map_err(Error::Socket)?,
        seq: 0,
    };
    for attempt in 1..=ATTEMPTS {
        let before = conn.generation()?;
        let table = conn.table();
        let after = conn.generation()?;
        if before == after {
            return Ok((table?, after));
        }
        // A failure here may come from the change itself (the table deleted between two
        // requests): read again rather than report it.
        if let Err(error) = table {
            log::debug!("dump {attempt} failed while the ruleset changed: {error}");
        }
        log::debug!("ruleset generation moved from {before} to {after} during dump {attempt}");
    }
    Err(Error::Unstable(ATTEMPTS))
}

/// The calling thread's namespace's ruleset generation: it moves with every transaction
/// committed there, to any table.
pub fn generation() -> Result<u32, Error> {
    generation_on(Socket::open().map_err(Error::Socket)?, 0).0
}

/// [`generation`] asked on `socket`, whose requests so far used sequence numbers up to `seq`;
/// the socket is handed back.
pub(super) fn generation_on(socket: Socket, seq: u32) -> (Result<u32, Error>, Socket) {
    let mut conn = Connection { socket, seq };
    (conn.generation(), conn.socket)
}

/// The generation a transaction committed at `generation` leaves (nf_tables_commit counts up
/// and skips 0).
pub fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

struct Connection {
    socket: Socket,
    seq: u32,
}

/// How a request failed.
enum Failure {
    Kernel(KernelError),
    Io(io::Error),
    Parse,
}

impl Connection {
    fn generation(&mut self) -> Result<u32, Error> {
        let mut generation = None;
        self.request(
            |buf, seq| sys::put_get_all(buf, libc::NFT_MSG_GETGEN as u16, NLM_F_ACK, seq),
            |msg| {
                generation = Some(sys::parse_gen(msg)?);
                Some(())
            },
        )
        .map_err(|f| failure(f, "generation", Error::ReadGeneration))?;
        generation.ok_or(Error::Parse { what: "generation" })
    }

    fn table(&mut self) -> Result<Option<ActualTable>, Error> {
        let mut info = None;
        let msg = libc::NFT_MSG_GETTABLE as u16;
        let found = self.request(
            |buf, seq| sys::put_table(buf, msg, NLM_F_ACK, seq, TABLE, None),
            |msg| {
                info = Some(sys::parse_table(msg)?);
                Some(())
            },
        );
        match found {
            Err(Failure::Kernel(KernelError(ENOENT))) => return Ok(None),
            result => result.map_err(|f| failure(f, "table", Error::ReadTable))?,
        }
        let Some(info) = info.filter(|t| t.name == TABLE) else {
            return Err(Error::Parse { what: "table" });
        };
        let mut actual = ActualTable {
            comment: info.userdata.as_deref().and_then(udata::read_comment),
            ..ActualTable::default()
        };
        for set in self.maps()? {
            self.read_elements(&set, &mut actual)?;
        }
        actual.elements.sort();
        Ok(Some(actual))
    }

    /// gearnat's maps in the table (other sets there are not gearnat's business).
    fn maps(&mut self) -> Result<Vec<SetInfo>, Error> {
        let mut sets = Vec::new();
        self.request(
            |buf, seq| sys::put_get_sets(buf, NLM_F_DUMP, seq, TABLE),
            |msg| {
                sets.push(sys::parse_set(msg)?);
                Some(())
            },
        )
        .map_err(|f| failure(f, "set", Error::ListMaps))?;
        sets.retain(|s| program::MAP_NAMES.contains(&s.name.as_str()));
        Ok(sets)
    }

    /// Adds the elements of map `set` to `actual`: owned ones as elements, the rest counted.
    fn read_elements(&mut self, set: &SetInfo, actual: &mut ActualTable) -> Result<(), Error> {
        // A map of another shape (made by hand under gearnat's name) holds nothing gearnat can
        // read; its elements count as unowned and go when the table is replaced.
        let shape_ok = set.flags & NFT_SET_MAP != 0
            && program::map_shape(&set.name) == Some((set.key_len, set.data_len));
        if !shape_ok {
            log::warn!(
                "map {} in table ip {TABLE} does not have gearnat's shape",
                set.name
            );
        }
        // Owners by comment bytes: a map holds thousands of elements of a few owners, which
        // then share their names.
        let mut owners: HashMap<Box<[u8]>, Option<Owner>> = HashMap::new();
        let msg = libc::NFT_MSG_GETSETELEM as u16;
        self.request(
            |buf, seq| sys::put_elements(buf, msg, NLM_F_DUMP, seq, TABLE, &set.name, &[]),
            |msg| {
                for element in message_elements(msg)? {
                    let owner = match owners.get(element.userdata) {
                        Some(owner) => owner.clone(),
                        None => {
                            let owner = udata::read_comment(element.userdata)
                                .and_then(|c| Owner::from_comment(&c));
                            owners.insert(element.userdata.into(), owner.clone());
                            owner
                        }
                    };
                    let value = shape_ok
                        .then(|| program::parse_element(&set.name, element.key, element.data))
                        .flatten();
                    match (value, owner) {
                        (Some(value), Some(owner)) => {
                            actual.elements.push(with_owner(value, owner));
                        }
                        _ => actual.unowned += 1,
                    }
                }
                Some(())
            },
        )
        .map_err(|f| {
            failure(f, "set element", |errno| Error::ReadElements {
                map: set.name.clone(),
                errno,
            })
        })
    }

    /// Sends one request built by `put` and hands each reply object to `on_reply` (which returns
    /// `None` when it cannot parse it), until the acknowledgement or the end of the dump.
    fn request(
        &mut self,
        put: impl FnOnce(&mut MsgBuf, u32) -> usize,
        mut on_reply: impl FnMut(&[u8]) -> Option<()>,
    ) -> Result<(), Failure> {
        self.seq += 1;
        let seq = self.seq;
        let mut request = MsgBuf::with_capacity(512);
        put(&mut request, seq);
        self.socket.send(request.as_bytes()).map_err(Failure::Io)?;

        let mut buf = MsgBuf::with_capacity(RECV_BYTES);
        loop {
            self.socket
                .recv(&mut buf, RECV_BYTES, true)
                .map_err(Failure::Io)?;
            for message in netlink::messages(buf.as_bytes()).ok_or(Failure::Parse)? {
                if message.seq != seq {
                    continue;
                }
                match message.reply() {
                    Reply::Ack | Reply::Done => return Ok(()),
                    Reply::Error { errno, .. } => return Err(Failure::Kernel(KernelError(errno))),
                    Reply::Data => on_reply(message.bytes).ok_or(Failure::Parse)?,
                }
            }
        }
    }
}

// A set-element message's attributes (<linux/netfilter/nf_tables.h>): the table and map it is
// for, and the nest holding its elements, one nest each, with a key, data and user data.
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub(super) const NFTA_DATA_VALUE: u16 = 1;

/// One element of a set-element message, borrowed from it; an attribute it lacks is empty.
#[derive(Debug, Default, PartialEq, Eq)]
struct RawElement<'a> {
    key: &'a [u8],
    data: &'a [u8],
    userdata: &'a [u8],
}

/// The elements of one NEWSETELEM message of a dump; `None` if the message is malformed.
/// Read here rather than through libnftnl, which copies every element into an allocation of its
/// own: a dump of 10,000 elements spent more time there than in the kernel.
fn message_elements(msg: &[u8]) -> Option<Vec<RawElement<'_>>> {
    let len = usize::try_from(u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?)).ok()?;
    let body = msg.get(HEADER_LEN + NFGEN_LEN..len)?;
    let Some(list) = netlink::attributes(body)?
        .into_iter()
        .find(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
    else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    // Every entry of the list is an element: the kernel types them NFTA_LIST_ELEM, libnftnl
    // numbers them 1, 2, 3..., and the kernel reads either without looking at the type.
    for entry in netlink::walk(list.value) {
        let entry = entry?;
        let mut element = RawElement::default();
        for attr in netlink::walk(entry.value) {
            let attr = attr?;
            match attr.kind {
                NFTA_SET_ELEM_KEY => element.key = data_value(attr.value)?,
                NFTA_SET_ELEM_DATA => element.data = data_value(attr.value)?,
                NFTA_SET_ELEM_USERDATA => element.userdata = attr.value,
                _ => {}
            }
        }
        out.push(element);
    }
    Some(out)
}

/// The value inside an NFTA_DATA nest (a key or a map's data).
fn data_value(nest: &[u8]) -> Option<&[u8]> {
    for attr in netlink::walk(nest) {
        let attr = attr?;
        if attr.kind == NFTA_DATA_VALUE {
            return Some(attr.value);
        }
    }
    None
}

/// A base chain of another table on the forward hook that may drop gearnat's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChain {
    /// `ip` or `inet`.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// Its policy is drop.
    pub policy_drop: bool,
    /// Handles of its rules that end in drop or reject.
    pub drop_rules: Vec<u64>,
    /// A `ct status dnat accept` rule comes before any of them: DNATed traffic passes.
    pub accepts_dnat_first: bool,
}

impl ForwardChain {
    /// Whether DNATed traffic to gearnat's instances may be dropped here.
    pub fn may_drop(&self) -> bool {
        !self.accepts_dnat_first && (self.policy_drop || !self.drop_rules.is_empty())
    }
}

/// The forward-hook base chains (families ip and inet) of every table but gearnat's own, in the
/// calling thread's namespace. Only reads.
pub fn forward_chains() -> Result<Vec<ForwardChain>, Error> {
    let mut conn = Connection {
        socket: Socket::open().map_err(Error::Socket)?,
        seq: 0,
    };
    let mut chains = Vec::new();
    conn.request(
        |buf, seq| sys::put_get_all(buf, libc::NFT_MSG_GETCHAIN as u16, NLM_F_DUMP, seq),
        |msg| {
            chains.push(sys::parse_chain(msg)?);
            Some(())
        },
    )
    .map_err(|f| failure(f, "chain", Error::ListChains))?;
    let mut out: Vec<ForwardChain> = chains
        .into_iter()
        .filter(|c| c.hook == Some(program::NF_INET_FORWARD))
        .filter_map(|c| {
            let family = family_name(c.family)?;
            let ours = family == "ip" && c.table == TABLE;
            (!ours).then(|| ForwardChain {
                family,
                policy_drop: c.policy == Some(program::NF_DROP),
                table: c.table,
                chain: c.name,
                drop_rules: vec![],
                accepts_dnat_first: false,
            })
        })
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    let mut rules = Vec::new();
    conn.request(
        |buf, seq| sys::put_get_all(buf, libc::NFT_MSG_GETRULE as u16, NLM_F_DUMP, seq),
        |msg| {
            rules.push(sys::parse_rule(msg)?);
            Some(())
        },
    )
    .map_err(|f| failure(f, "rule", Error::ListRules))?;
    for chain in &mut out {
        let mine = rules.iter().filter(|r| {
            family_name(r.family) == Some(chain.family)
                && r.table == chain.table
                && r.chain == chain.chain
        });
        for rule in mine {
            if program::is_ct_dnat_accept(&rule.exprs) && chain.drop_rules.is_empty() {
                chain.accepts_dnat_first = true;
            }
            if program::ends_in_drop(&rule.exprs) {
                chain.drop_rules.push(rule.handle);
            }
        }
    }
    Ok(out)
}

fn family_name(family: u32) -> Option<&'static str> {
    match family {
        1 => Some("inet"),
        2 => Some("ip"),
        _ => None,
    }
}

/// Every object of one kind (NFT_MSG_GETTABLE, GETCHAIN, GETSET, ...) in the namespace, as the
/// kernel sends it, without the netlink header: to compare what two namespaces hold, byte for
/// byte.
#[cfg(test)]
pub(crate) fn raw_objects(msg_type: u16) -> Vec<Vec<u8>> {
    let socket = Socket::open().expect("netlink socket");
    let mut conn = Connection { socket, seq: 0 };
    let mut objects = Vec::new();
    let put = |buf: &mut MsgBuf, seq| sys::put_get_all(buf, msg_type, NLM_F_DUMP, seq);
    let collect = |msg: &[u8]| {
        objects.push(msg[netlink::HEADER_LEN..].to_vec());
        Some(())
    };
    if conn.request(put, collect).is_err() {
        panic!("dumping objects of message type {msg_type}");
    }
    objects.sort();
    objects
}

fn failure(f: Failure, what: &'static str, kernel: impl FnOnce(KernelError) -> Error) -> Error {
    match f {
        Failure::Kernel(errno) => kernel(errno),
        Failure::Io(e) => Error::Receive(e),
        Failure::Parse => Error::Parse { what },
    }
}

fn with_owner(value: ElementValue, owner: Owner) -> Element {
    match value {
        ElementValue::Port {
            proto,
            host_port,
            target,
        } => Element::Port {
            proto,
            host_port,
            target,
            owner,
        },
        ElementValue::Link { proto, dial, via } => Element::Link {
            proto,
            dial,
            via,
            owner,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::sys::ElementBytes;

    /// A NEWSETELEM message as libnftnl builds it, read back without libnftnl.
    #[test]
    fn elements_are_read_from_a_message() {
        let comment = udata::comment("gearnat:seed/web-1").unwrap();
        let elements = [
            ElementBytes::of(&[0x17, 0xac], &[10, 211, 0, 2, 0, 80], &comment),
            ElementBytes::of(&[0x17, 0xad], &[10, 211, 0, 3, 0, 81], &[]),
        ];
        let mut buf = MsgBuf::with_capacity(1024);
        let refs: Vec<&ElementBytes> = elements.iter().collect();
        let msg = libc::NFT_MSG_NEWSETELEM as u16;
        sys::put_elements(&mut buf, msg, 0, 7, TABLE, "tcp_ports", &refs);
        let read = message_elements(buf.as_bytes()).unwrap();
        let want: Vec<RawElement> = elements
            .iter()
            .map(|e| RawElement {
                key: &e.key,
                data: &e.data,
                userdata: &e.userdata,
            })
            .collect();
        assert_eq!(read, want);
        // An attribute that claims more bytes than the message has makes it unreadable.
        let mut broken = buf.as_bytes().to_vec();
        let body = HEADER_LEN + NFGEN_LEN;
        let list = netlink::attributes(&broken[body..])
            .unwrap()
            .into_iter()
            .find(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
            .unwrap();
        let first_len_at = body + list.offset + 4;
        broken[first_len_at..first_len_at + 2].copy_from_slice(&0xfff0u16.to_ne_bytes());
        assert_eq!(message_elements(&broken), None);
    }
}
