//! The unsafe glue: libnftnl builds and parses nf_tables messages, libc moves them over a
//! NETLINK_NETFILTER socket. Everything outside this module is safe Rust working on plain bytes
//! and the descriptions in `program`.
//!
//! Messages are built into a [`MsgBuf`], a 4-byte aligned buffer (libnftnl writes `struct
//! nlmsghdr` in place), after reserving an upper bound of the message's size: libnftnl appends
//! attributes without checking any bounds, so the bound is what keeps it inside the buffer.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr;
use std::rc::Rc;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::dump::{
    NFTA_DATA_VALUE, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA,
};
use super::program::{
    Chain, ElementValueBytes, Expr, Map, NFPROTO_IPV4, NFT_NAT_DNAT, NFT_REG_VERDICT,
};

// <linux/netlink.h> values missing from the libc crate for this target.
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// A growable byte buffer with 4-byte alignment, holding whole netlink messages.
pub(crate) struct MsgBuf {
    words: Vec<u32>,
    len: usize,
}

impl MsgBuf {
    pub fn with_capacity(bytes: usize) -> MsgBuf {
        MsgBuf {
            words: Vec::with_capacity(bytes.div_ceil(4)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes (see `reserve`/`finish`), u8 has
        // no alignment requirement, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn spare_mut(&mut self) -> &mut [u8] {
        let total = self.words.len() * 4;
        // SAFETY: the words vector has `total` initialized (zeroed) bytes, `len <= total`, and the
        // slice borrows `self` mutably.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>().add(self.len),
                total - self.len,
            )
        }
    }

    /// Zeroed room for a message of at most `bound` bytes after the current end.
    fn reserve(&mut self, bound: usize) -> *mut libc::c_char {
        let at = self.room(bound);
        self.spare_mut()[..bound].fill(0);
        at
    }

    /// Room for `bound` bytes after the current end, holding whatever it held before.
    fn room(&mut self, bound: usize) -> *mut libc::c_char {
        let words = (self.len + bound).div_ceil(4);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
        self.spare_mut().as_mut_ptr().cast()
    }

    /// Takes the message just built at the end into the buffer; returns its offset.
    fn finish(&mut self, bound: usize) -> usize {
        let start = self.len;
        let header = &self.spare_mut()[..4];
        let len = u32::from_ne_bytes(header.try_into().unwrap()) as usize;
        // An overrun would already have written past the reserved room: stop right here.
        assert!(
            len <= bound,
            "netlink message of {len} bytes overran its bound of {bound}"
        );
        self.len += len.next_multiple_of(4);
        start
    }

    /// Copies `bytes` (one or more netlink messages) into a fresh aligned buffer.
    pub fn from_bytes(bytes: &[u8]) -> MsgBuf {
        let mut buf = MsgBuf {
            words: vec![0; bytes.len().div_ceil(4)],
            len: 0,
        };
        buf.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        buf.len = bytes.len();
        buf
    }

    fn nlh(&self) -> *const libc::nlmsghdr {
        self.words.as_ptr().cast()
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("object names never contain NUL")
}

/// Starts a message of `msg_type` (an NFT_MSG_* value) at the end of `buf`.
fn header(
    buf: &mut MsgBuf,
    bound: usize,
    msg_type: u16,
    family: u16,
    flags: u16,
    seq: u32,
) -> *mut libc::nlmsghdr {
    let at = buf.reserve(bound);
    // SAFETY: `at` points to `bound` zeroed, 4-byte aligned bytes, which hold the 20-byte header.
    unsafe { sys::nftnl_nlmsg_build_hdr(at, msg_type, family, flags, seq) }
}

/// NFNL_BATCH_GENID (<linux/netfilter/nfnetlink.h>): the ruleset generation a batch is for.
const NFNL_BATCH_GENID: u16 = 1;

/// The batch-begin message; with `generation`, the kernel refuses the whole batch (ERESTART)
/// unless the ruleset is still at that generation, and holds it there until the batch ends.
pub(crate) fn put_batch_begin(buf: &mut MsgBuf, seq: u32, generation: Option<u32>) -> usize {
    let at = buf.reserve(64);
    // SAFETY: 64 zeroed, aligned bytes hold the 20-byte batch-begin message.
    unsafe { sys::nftnl_batch_begin(at, seq) };
    if let Some(generation) = generation {
        // libnftnl has no setter for it; nft writes it the same way: one u32 attribute, in
        // network byte order, after the nfgenmsg.
        let msg = buf.spare_mut();
        let len = u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize;
        msg[len..len + 2].copy_from_slice(&8u16.to_ne_bytes());
        msg[len + 2..len + 4].copy_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
        msg[len + 4..len + 8].copy_from_slice(&generation.to_be_bytes());
        msg[..4].copy_from_slice(&(len as u32 + 8).to_ne_bytes());
    }
    buf.finish(64)
}

pub(crate) fn put_batch_end(buf: &mut MsgBuf, seq: u32) -> usize {
    let at = buf.reserve(64);
    // SAFETY: as in `put_batch_begin`.
    unsafe { sys::nftnl_batch_end(at, seq) };
    buf.finish(64)
}

/// NEWTABLE with `userdata`, or DELTABLE / GETTABLE by name alone.
pub(crate) fn put_table(
    buf: &mut MsgBuf,
    msg_type: u16,
    flags: u16,
    seq: u32,
    name: &str,
    userdata: Option<&[u8]>,
) -> usize {
    let bound = 128 + name.len() + userdata.map_or(0, <[u8]>::len);
    let name = cstring(name);
    let nlh = header(buf, bound, msg_type, NFPROTO_IPV4, flags, seq);
    // SAFETY: the table object is freshly allocated and freed here; libnftnl copies the strings
    // and data it is given; `nlh` has room for `bound` bytes, more than the name, the flags and
    // the userdata with their attribute headers.
    unsafe {
        let table = sys::nftnl_table_alloc();
        assert!(!table.is_null(), "out of memory");
        sys::nftnl_table_set_str(table, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        sys::nftnl_table_set_u32(table, sys::NFTNL_TABLE_FAMILY as u16, NFPROTO_IPV4.into());
        if let Some(data) = userdata {
            sys::nftnl_table_set_u32(table, sys::NFTNL_TABLE_FLAGS as u16, 0);
            sys::nftnl_table_set_data(
                table,
                sys::NFTNL_TABLE_USERDATA as u16,
                data.as_ptr().cast(),
                data.len() as u32,
            );
        }
        sys::nftnl_table_nlmsg_build_payload(nlh, table);
        sys::nftnl_table_free(table);
    }
    buf.finish(bound)
}

/// NEWCHAIN for a base chain with policy accept.
pub(crate) fn put_chain(
    buf: &mut MsgBuf,
    flags: u16,
    seq: u32,
    table: &str,
    chain: &Chain,
) -> usize {
    let bound = 256;
    let (table, name, kind) = (cstring(table), cstring(chain.name), cstring(chain.kind));
    let msg = libc::NFT_MSG_NEWCHAIN as u16;
    let nlh = header(buf, bound, msg, NFPROTO_IPV4, flags, seq);
    // SAFETY: as in `put_table`; a chain message with short names is well under 256 bytes.
    unsafe {
        let c = sys::nftnl_chain_alloc();
        assert!(!c.is_null(), "out of memory");
        sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
        sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
        sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_FAMILY as u16, NFPROTO_IPV4.into());
        sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TYPE as u16, kind.as_ptr());
        sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16, chain.hook);
        sys::nftnl_chain_set_s32(c, sys::NFTNL_CHAIN_PRIO as u16, chain.priority);
        sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_POLICY as u16, super::program::NF_ACCEPT);
        sys::nftnl_chain_nlmsg_build_payload(nlh, c);
        sys::nftnl_chain_free(c);
    }
    buf.finish(bound)
}

/// NEWSET for a named map.
pub(crate) fn put_map(buf: &mut MsgBuf, flags: u16, seq: u32, table: &str, map: &Map) -> usize {
    let bound = 256 + map.userdata.len();
    let (table, name) = (cstring(table), cstring(map.name));
    let msg = libc::NFT_MSG_NEWSET as u16;
    let nlh = header(buf, bound, msg, NFPROTO_IPV4, flags, seq);
    // SAFETY: as in `put_table`; ten short attributes and the userdata fit the bound.
    unsafe {
        let s = sys::nftnl_set_alloc();
        assert!(!s.is_null(), "out of memory");
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_IPV4.into());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, super::program::NFT_SET_MAP);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, map.key_type);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, map.key_len);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, map.data_type);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, map.data_len);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, map.id);
        if let Some(size) = map.size {
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DESC_SIZE as u16, size);
        }
        sys::nftnl_set_set_data(
            s,
            sys::NFTNL_SET_USERDATA as u16,
            map.userdata.as_ptr().cast(),
            map.userdata.len() as u32,
        );
        sys::nftnl_set_nlmsg_build_payload(nlh, s);
        sys::nftnl_set_free(s);
    }
    buf.finish(bound)
}

/// NEWRULE appending `exprs` to `chain`.
pub(crate) fn put_rule(
    buf: &mut MsgBuf,
    flags: u16,
    seq: u32,
    table: &str,
    chain: &str,
    exprs: &[Expr],
) -> usize {
    // Each expression is its name, a few u32 attributes and at most 16 bytes of data.
    let bound = 256 + exprs.len() * 160;
    let (table, chain) = (cstring(table), cstring(chain));
    let msg = libc::NFT_MSG_NEWRULE as u16;
    let nlh = header(buf, bound, msg, NFPROTO_IPV4, flags, seq);
    // SAFETY: the rule owns each expression once added and frees them with itself; see also
    // `put_table`.
    unsafe {
        let r = sys::nftnl_rule_alloc();
        assert!(!r.is_null(), "out of memory");
        sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
        sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
        sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, NFPROTO_IPV4.into());
        for expr in exprs {
            sys::nftnl_rule_add_expr(r, build_expr(expr));
        }
        sys::nftnl_rule_nlmsg_build_payload(nlh, r);
        sys::nftnl_rule_free(r);
    }
    buf.finish(bound)
}

/// A new libnftnl expression for `expr`; the caller owns it.
///
/// # Safety
/// The returned pointer must be freed, or handed to a rule that frees it.
unsafe fn build_expr(expr: &Expr) -> *mut sys::nftnl_expr {
    let name: &CStr = match expr {
        Expr::Meta { .. } => c"meta",
        Expr::Payload { .. } => c"payload",
        Expr::Cmp { .. } => c"cmp",
        Expr::Bitwise { .. } => c"bitwise",
        Expr::Ct { .. } => c"ct",
        Expr::Fib { .. } => c"fib",
        Expr::Lookup { .. } => c"lookup",
        Expr::Dnat { .. } => c"nat",
        Expr::Masquerade => c"masq",
        Expr::Verdict { .. } => c"immediate",
    };
    // SAFETY: `name` is one of libnftnl's expression types, so allocation fails only without
    // memory; every attribute set below belongs to that type, and libnftnl copies data and
    // strings.
    unsafe {
        let e = sys::nftnl_expr_alloc(name.as_ptr());
        assert!(!e.is_null(), "out of memory");
        let u32_attr = |attr: u32, value: u32| sys::nftnl_expr_set_u32(e, attr as u16, value);
        let data_attr = |attr: u32, data: &[u8]| {
            sys::nftnl_expr_set(e, attr as u16, data.as_ptr().cast(), data.len() as u32)
        };
        match expr {
            Expr::Meta { key, dreg } => {
                u32_attr(sys::NFTNL_EXPR_META_KEY, *key);
                u32_attr(sys::NFTNL_EXPR_META_DREG, *dreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                u32_attr(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                u32_attr(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
                u32_attr(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                u32_attr(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                u32_attr(sys::NFTNL_EXPR_CMP_SREG, *sreg);
                u32_attr(sys::NFTNL_EXPR_CMP_OP, *op);
                data_attr(sys::NFTNL_EXPR_CMP_DATA, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                u32_attr(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
                u32_attr(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
                u32_attr(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
                data_attr(sys::NFTNL_EXPR_BITWISE_MASK, mask);
                data_attr(sys::NFTNL_EXPR_BITWISE_XOR, xor);
            }
            Expr::Ct { key, dreg } => {
                u32_attr(sys::NFTNL_EXPR_CT_KEY, *key);
                u32_attr(sys::NFTNL_EXPR_CT_DREG, *dreg);
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                u32_attr(sys::NFTNL_EXPR_FIB_FLAGS, *flags);
                u32_attr(sys::NFTNL_EXPR_FIB_RESULT, *result);
                u32_attr(sys::NFTNL_EXPR_FIB_DREG, *dreg);
            }
            Expr::Lookup {
                sreg,
                dreg,
                set,
                set_id,
            } => {
                let set = cstring(set);
                u32_attr(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                u32_attr(sys::NFTNL_EXPR_LOOKUP_DREG, *dreg);
                sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                u32_attr(sys::NFTNL_EXPR_LOOKUP_SET_ID, *set_id);
            }
            Expr::Dnat {
                addr_reg,
                proto_reg,
            } => {
                u32_attr(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
                u32_attr(sys::NFTNL_EXPR_NAT_FAMILY, NFPROTO_IPV4.into());
                u32_attr(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *addr_reg);
                u32_attr(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *proto_reg);
            }
            Expr::Masquerade => {}
            Expr::Verdict { code } => {
                u32_attr(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
                u32_attr(sys::NFTNL_EXPR_IMM_VERDICT, *code);
            }
        }
        e
    }
}

/// One element's bytes, ready for a NEWSETELEM or DELSETELEM message: key and data (empty for
/// none) inline, and the user data (the owner's comment) shared by the owner's elements.
pub(crate) struct ElementBytes {
    pub key: ElementValueBytes,
    pub data: ElementValueBytes,
    pub userdata: Rc<[u8]>,
}

impl ElementBytes {
    /// An element of these bytes, for tests.
    #[cfg(test)]
    pub fn of(key: &[u8], data: &[u8], userdata: &[u8]) -> ElementBytes {
        ElementBytes {
            key: ElementValueBytes::new(key),
            data: ElementValueBytes::new(data),
            userdata: userdata.into(),
        }
    }

    /// Upper bound of the element's size in a message: the list entry, key and data nests with
    /// their NFTA_DATA_VALUE (each at most 16 bytes of value) and the userdata attribute.
    pub fn bound(&self) -> usize {
        64 + 2 * 16 + self.userdata.len() + 8
    }
}

/// NEWSETELEM or DELSETELEM (or a GETSETELEM dump request, with no elements) for map `set`.
pub(crate) fn put_elements(
    buf: &mut MsgBuf,
    msg_type: u16,
    flags: u16,
    seq: u32,
    table: &str,
    set: &str,
    elements: &[&ElementBytes],
) -> usize {
    let bound = 128 + elements.iter().map(|e| e.bound()).sum::<usize>();
    let (table, set) = (cstring(table), cstring(set));
    let nlh = header(buf, bound, msg_type, NFPROTO_IPV4, flags, seq);
    // SAFETY: the set owns the elements added to it and frees them with itself; libnftnl copies
    // the data it is given; see `ElementBytes::bound` for the room reserved.
    unsafe {
        let s = sys::nftnl_set_alloc();
        assert!(!s.is_null(), "out of memory");
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, set.as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_IPV4.into());
        for element in elements {
            let e = sys::nftnl_set_elem_alloc();
            assert!(!e.is_null(), "out of memory");
            let set_bytes = |attr: u32, bytes: &[u8]| {
                sys::nftnl_set_elem_set(e, attr as u16, bytes.as_ptr().cast(), bytes.len() as u32)
            };
            set_bytes(sys::NFTNL_SET_ELEM_KEY, &element.key);
            if !element.data.is_empty() {
                set_bytes(sys::NFTNL_SET_ELEM_DATA, &element.data);
            }
            if !element.userdata.is_empty() {
                set_bytes(sys::NFTNL_SET_ELEM_USERDATA, &element.userdata);
            }
            sys::nftnl_set_elem_add(s, e);
        }
        sys::nftnl_set_elems_nlmsg_build_payload(nlh, s);
        sys::nftnl_set_free(s);
    }
    buf.finish(bound)
}

/// Marks an attribute that holds attributes (<linux/netlink.h>).
const NLA_F_NESTED: u16 = 1 << 15;

/// NEWSETELEM or DELSETELEM for map `set`, written attribute by attribute: the bytes libnftnl's
/// [`put_elements`] writes (a test holds them equal), without an allocation per element.
/// Returns the message's offset in `buf` and, for each element, where its attribute lies in
/// the message (to name the element the kernel rejects).
pub(crate) fn put_element_list(
    buf: &mut MsgBuf,
    msg_type: u16,
    flags: u16,
    seq: u32,
    (table, set): (&str, &str),
    elements: &[&ElementBytes],
) -> (usize, Vec<std::ops::Range<usize>>) {
    let bound = 128 + table.len() + set.len() + elements.iter().map(|e| e.bound()).sum::<usize>();
    header(buf, bound, msg_type, NFPROTO_IPV4, flags, seq);
    let mut w = Attrs {
        bytes: &mut buf.spare_mut()[..bound],
        len: super::netlink::HEADER_LEN + super::netlink::NFGEN_LEN,
    };
    w.put_strz(NFTA_SET_ELEM_LIST_SET, set);
    w.put_strz(NFTA_SET_ELEM_LIST_TABLE, table);
    let mut ranges = Vec::with_capacity(elements.len());
    if !elements.is_empty() {
        let list = w.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        // libnftnl numbers the list's entries from 1; the kernel reads them in order whatever
        // their type.
        for (number, element) in (1..).zip(elements) {
            let entry = w.nest_start(number);
            let key = w.nest_start(NFTA_SET_ELEM_KEY);
            w.put(NFTA_DATA_VALUE, &element.key);
            w.nest_end(key);
            if !element.data.is_empty() {
                let data = w.nest_start(NFTA_SET_ELEM_DATA);
                w.put(NFTA_DATA_VALUE, &element.data);
                w.nest_end(data);
            }
            if !element.userdata.is_empty() {
                w.put(NFTA_SET_ELEM_USERDATA, &element.userdata);
            }
            w.nest_end(entry);
            ranges.push(entry..w.len);
        }
        w.nest_end(list);
    }
    let len = u32::try_from(w.len).expect("a message under its bound");
    w.bytes[..4].copy_from_slice(&len.to_ne_bytes());
    (buf.finish(bound), ranges)
}

/// Appends netlink attributes to a message being written in zeroed room (so padding is
/// already zero); `len` is the message's length so far. Overrunning the room panics.
struct Attrs<'b> {
    bytes: &'b mut [u8],
    len: usize,
}

impl Attrs<'_> {
    fn put_header(&mut self, kind: u16, len: usize) {
        let len = u16::try_from(len).expect("attributes stay under 64 KiB");
        self.bytes[self.len..self.len + 2].copy_from_slice(&len.to_ne_bytes());
        self.bytes[self.len + 2..self.len + 4].copy_from_slice(&kind.to_ne_bytes());
    }

    fn put(&mut self, kind: u16, value: &[u8]) {
        self.put_header(kind, 4 + value.len());
        self.bytes[self.len + 4..self.len + 4 + value.len()].copy_from_slice(value);
        self.len += (4 + value.len()).next_multiple_of(4);
    }

    /// A string with its terminating NUL, as libmnl's `mnl_attr_put_strz`.
    fn put_strz(&mut self, kind: u16, value: &str) {
        self.put_header(kind, 4 + value.len() + 1);
        self.bytes[self.len + 4..self.len + 4 + value.len()].copy_from_slice(value.as_bytes());
        self.len += (4 + value.len() + 1).next_multiple_of(4);
    }

    /// Starts a nested attribute; returns where it starts, for [`Attrs::nest_end`].
    fn nest_start(&mut self, kind: u16) -> usize {
        let start = self.len;
        self.put_header(kind | NLA_F_NESTED, 4);
        self.len += 4;
        start
    }

    fn nest_end(&mut self, start: usize) {
        let len = u16::try_from(self.len - start).expect("nests stay under 64 KiB");
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// A GETSET dump request for the maps of `table`.
pub(crate) fn put_get_sets(buf: &mut MsgBuf, flags: u16, seq: u32, table: &str) -> usize {
    let bound = 128 + table.len();
    let table = cstring(table);
    let msg = libc::NFT_MSG_GETSET as u16;
    let nlh = header(buf, bound, msg, NFPROTO_IPV4, flags, seq);
    // SAFETY: as in `put_table`.
    unsafe {
        let s = sys::nftnl_set_alloc();
        assert!(!s.is_null(), "out of memory");
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_nlmsg_build_payload(nlh, s);
        sys::nftnl_set_free(s);
    }
    buf.finish(bound)
}

/// A request with no attributes, for any family: GETGEN (the ruleset generation), or a dump of
/// every object of one kind (NFT_MSG_GET*).
pub(crate) fn put_get_all(buf: &mut MsgBuf, msg_type: u16, flags: u16, seq: u32) -> usize {
    header(buf, 64, msg_type, libc::AF_UNSPEC as u16, flags, seq);
    buf.finish(64)
}

/// A table as a dump shows it.
pub(crate) struct TableInfo {
    pub name: String,
    pub userdata: Option<Vec<u8>>,
}

/// A set as a dump shows it.
pub(crate) struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key_len: u32,
    pub data_len: u32,
}

/// Parses one NEWTABLE message; `None` when libnftnl rejects it.
pub(crate) fn parse_table(msg: &[u8]) -> Option<TableInfo> {
    let buf = MsgBuf::from_bytes(msg);
    // SAFETY: `buf` holds one whole, aligned netlink message that outlives the parse; the strings
    // and data read back are copied before the table object is freed.
    unsafe {
        let t = sys::nftnl_table_alloc();
        assert!(!t.is_null(), "out of memory");
        let parsed = sys::nftnl_table_nlmsg_parse(buf.nlh(), t) >= 0;
        let info = parsed.then(|| {
            let name = sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16);
            let mut len = 0u32;
            let data = sys::nftnl_table_get_data(t, sys::NFTNL_TABLE_USERDATA as u16, &mut len);
            TableInfo {
                name: owned_str(name),
                userdata: owned_bytes(data, len),
            }
        });
        sys::nftnl_table_free(t);
        info
    }
}

/// Parses one NEWSET message.
pub(crate) fn parse_set(msg: &[u8]) -> Option<SetInfo> {
    let buf = MsgBuf::from_bytes(msg);
    // SAFETY: as in `parse_table`.
    unsafe {
        let s = sys::nftnl_set_alloc();
        assert!(!s.is_null(), "out of memory");
        let parsed = sys::nftnl_set_nlmsg_parse(buf.nlh(), s) >= 0;
        let info = parsed.then(|| SetInfo {
            name: owned_str(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)),
            flags: sys::nftnl_set_get_u32(s, sys::NFTNL_SET_FLAGS as u16),
            key_len: sys::nftnl_set_get_u32(s, sys::NFTNL_SET_KEY_LEN as u16),
            data_len: sys::nftnl_set_get_u32(s, sys::NFTNL_SET_DATA_LEN as u16),
        });
        sys::nftnl_set_free(s);
        info
    }
}

/// A chain of any table and family, as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainInfo {
    pub family: u32,
    pub table: String,
    pub name: String,
    /// Base chains only: the hook and the policy (NF_ACCEPT, NF_DROP).
    pub hook: Option<u32>,
    pub policy: Option<u32>,
}

/// Parses one NEWCHAIN message.
pub(crate) fn parse_chain(msg: &[u8]) -> Option<ChainInfo> {
    let buf = MsgBuf::from_bytes(msg);
    // SAFETY: as in `parse_table`.
    unsafe {
        let c = sys::nftnl_chain_alloc();
        assert!(!c.is_null(), "out of memory");
        let parsed = sys::nftnl_chain_nlmsg_parse(buf.nlh(), c) >= 0;
        let u32_if_set = |attr: u32| {
            sys::nftnl_chain_is_set(c, attr as u16)
                .then(|| sys::nftnl_chain_get_u32(c, attr as u16))
        };
        let info = parsed.then(|| ChainInfo {
            family: sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FAMILY as u16),
            table: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)),
            name: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
            hook: u32_if_set(sys::NFTNL_CHAIN_HOOKNUM),
            policy: u32_if_set(sys::NFTNL_CHAIN_POLICY),
        });
        sys::nftnl_chain_free(c);
        info
    }
}

/// One expression of a rule, reduced to what tells a drop from a `ct status dnat accept`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExprInfo {
    pub name: String,
    /// `ct`: the key loaded.
    pub ct_key: Option<u32>,
    /// `bitwise`: the mask.
    pub mask: Option<Vec<u8>>,
    /// `immediate`: the verdict.
    pub verdict: Option<u32>,
    /// `match` (an xtables match, as iptables-nft writes them): its name, revision and info.
    pub xt_match: Option<(String, u32, Vec<u8>)>,
}

/// A rule of any table and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleInfo {
    pub family: u32,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<ExprInfo>,
}

/// Parses one NEWRULE message.
pub(crate) fn parse_rule(msg: &[u8]) -> Option<RuleInfo> {
    let buf = MsgBuf::from_bytes(msg);
    let mut exprs: Vec<ExprInfo> = Vec::new();
    // SAFETY: as in `parse_table`; `collect_expr` gets `exprs` as its data pointer, used only
    // during `nftnl_expr_foreach`, while nothing else touches it.
    unsafe {
        let r = sys::nftnl_rule_alloc();
        assert!(!r.is_null(), "out of memory");
        let parsed = sys::nftnl_rule_nlmsg_parse(buf.nlh(), r) >= 0;
        if parsed {
            let data = ptr::from_mut(&mut exprs).cast();
            sys::nftnl_expr_foreach(r, Some(collect_expr), data);
        }
        let info = parsed.then(|| RuleInfo {
            family: sys::nftnl_rule_get_u32(r, sys::NFTNL_RULE_FAMILY as u16),
            table: owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16)),
            chain: owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16)),
            handle: sys::nftnl_rule_get_u64(r, sys::NFTNL_RULE_HANDLE as u16),
            exprs,
        });
        sys::nftnl_rule_free(r);
        info
    }
}

unsafe extern "C" fn collect_expr(e: *mut sys::nftnl_expr, data: *mut libc::c_void) -> i32 {
    // SAFETY: `data` is the `Vec<ExprInfo>` passed by `parse_rule`, `e` an expression of the
    // rule being iterated; everything read is copied before the rule is freed.
    unsafe {
        let exprs = &mut *data.cast::<Vec<ExprInfo>>();
        let name = owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
        let u32_if_set = |attr: u32| {
            sys::nftnl_expr_is_set(e, attr as u16).then(|| sys::nftnl_expr_get_u32(e, attr as u16))
        };
        let mut info = ExprInfo::default();
        let mut info_of_match = None;
        match name.as_str() {
            "ct" => info.ct_key = u32_if_set(sys::NFTNL_EXPR_CT_KEY),
            "immediate" => info.verdict = u32_if_set(sys::NFTNL_EXPR_IMM_VERDICT),
            "match" => {
                let mut len = 0u32;
                let info = sys::nftnl_expr_get(e, sys::NFTNL_EXPR_MT_INFO as u16, &mut len);
                info_of_match = Some((
                    owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_MT_NAME as u16)),
                    sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_MT_REV as u16),
                    owned_bytes(info, len).unwrap_or_default(),
                ));
            }
            "bitwise" => {
                let mut len = 0u32;
                let mask = sys::NFTNL_EXPR_BITWISE_MASK as u16;
                info.mask = owned_bytes(sys::nftnl_expr_get(e, mask, &mut len), len);
            }
            _ => {}
        }
        info.name = name;
        info.xt_match = info_of_match;
        exprs.push(info);
    }
    0
}

/// Parses one NEWGEN message: the generation id.
pub(crate) fn parse_gen(msg: &[u8]) -> Option<u32> {
    let buf = MsgBuf::from_bytes(msg);
    // SAFETY: as in `parse_table`.
    unsafe {
        let g = sys::nftnl_gen_alloc();
        assert!(!g.is_null(), "out of memory");
        let parsed = sys::nftnl_gen_nlmsg_parse(buf.nlh(), g) >= 0;
        let id = parsed.then(|| sys::nftnl_gen_get_u32(g, sys::NFTNL_GEN_ID as u16));
        sys::nftnl_gen_free(g);
        id
    }
}

/// # Safety
/// `s` is null or a NUL-terminated string valid for the call.
unsafe fn owned_str(s: *const libc::c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// # Safety
/// `p` is null or valid for reading `len` bytes during the call.
unsafe fn owned_bytes(p: *const libc::c_void, len: u32) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and valid for `len` bytes per the contract.
    Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec())
}

/// A NETLINK_NETFILTER socket in the calling thread's network namespace, opened and bound by
/// libmnl.
pub(crate) struct Socket {
    mnl: mnl::Socket,
}

impl Socket {
    /// The socket's file status (its inode names it in /proc/net/netlink).
    #[cfg(test)]
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        // SAFETY: the descriptor is this socket's own, open for as long as `self` is borrowed;
        // the File made of it is not dropped, so it does not close it.
        let file = std::mem::ManuallyDrop::new(unsafe {
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(self.mnl.as_raw_fd())
        });
        file.metadata()
    }

    /// Closes the socket without waiting for nf_tables to free what its batches removed (see
    /// [`crate::release`]).
    pub fn release(self) -> crate::release::Released {
        // SAFETY: the descriptor is this socket's own, open for as long as `self` is borrowed.
        let copy = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.mnl.as_raw_fd()) }
            .try_clone_to_owned();
        // Closing one of two descriptors does not release the socket; the copy's end does
        // (or, without a copy, this one's).
        drop(self);
        match copy {
            Ok(copy) => crate::release::release(copy),
            Err(_) => crate::release::Released::InPlace,
        }
    }

    /// Opens and binds the socket; error replies carry only the failing message's header
    /// (NETLINK_CAP_ACK) plus the offset of the attribute the kernel rejected (NETLINK_EXT_ACK).
    pub fn open() -> io::Result<Socket> {
        let socket = Socket {
            mnl: mnl::Socket::new(mnl::Bus::Netfilter)?,
        };
        // Both are optional refinements of error reports; old kernels lack them.
        let _ = socket.set_int(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = socket.set_int(libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        Ok(socket)
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` is a c_int that lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                self.mnl.as_raw_fd(),
                level,
                name,
                ptr::from_ref(&value).cast(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Subscribes to a multicast group of nfnetlink (e.g. NFNLGRP_NFTABLES, nf_tables'
    /// change notifications).
    pub fn join_group(&self, group: libc::c_int) -> io::Result<()> {
        self.set_int(libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group)
    }

    /// Raises the send and receive buffers past their sysctl limits (needs CAP_NET_ADMIN), so a
    /// large batch fits one sendmsg and its acknowledgements fit the receive queue.
    pub fn force_buffers(&self, send: usize, receive: usize) -> io::Result<()> {
        let clamp = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, clamp(send))?;
        self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, clamp(receive))
    }

    /// Sends `bytes` to the kernel as one datagram: nfnetlink takes a batch from one message
    /// only. (libmnl's own `send_all` cuts a batch into 128 KiB pages, which breaks it.)
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        match self.mnl.send(bytes)? {
            n if n != bytes.len() => Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                bytes.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Receives one datagram into `buf` (replacing its contents), retrying when a signal
    /// interrupts. With `wait` false, returns `WouldBlock` when none is queued. A datagram larger
    /// than `capacity` is an error.
    pub fn recv(&self, buf: &mut MsgBuf, capacity: usize, wait: bool) -> io::Result<()> {
        buf.len = 0;
        let at = buf.room(capacity);
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        let n = loop {
            // SAFETY: `at` points to `capacity` writable bytes inside `buf`.
            let n = unsafe { libc::recv(self.mnl.as_raw_fd(), at.cast(), capacity, flags) };
            match usize::try_from(n) {
                Ok(n) => break n,
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        };
        if n > capacity {
            return Err(io::Error::other(format!(
                "netlink datagram of {n} bytes truncated"
            )));
        }
        buf.len = n;
        Ok(())
    }

    /// Waits up to `timeout_ms` for a datagram; true when one is queued.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.mnl.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd for the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::netlink;

    use ElementBytes as E;

    /// The direct writer's messages are libnftnl's, byte for byte, and it locates each element.
    #[test]
    fn element_lists_are_written_as_libnftnl_writes_them() {
        let comment = crate::netfilter::udata::comment("gearnat:seed/web-1").unwrap();
        let odd = crate::netfilter::udata::comment("gearnat:s/a-1").unwrap();
        let mut elements: Vec<ElementBytes> = (0..350u16)
            .map(|i| {
                let port = (20000 + i).to_be_bytes();
                let userdata = if i % 3 == 0 { &odd } else { &comment };
                E::of(&port, &[10, 211, 0, 2, 0, 80, 0, 0], userdata)
            })
            .collect();
        elements.push(E::of(&[0x17, 0xad], &[], &[]));
        for (msg, flags) in [
            (libc::NFT_MSG_NEWSETELEM as u16, 0x0605),
            (libc::NFT_MSG_DELSETELEM as u16, 0x0005),
        ] {
            for count in [0, 1, 2, elements.len()] {
                let refs: Vec<&ElementBytes> = elements[..count].iter().collect();
                let mut by_libnftnl = MsgBuf::with_capacity(64 * 1024);
                put_elements(
                    &mut by_libnftnl,
                    msg,
                    flags,
                    9,
                    "gearnat",
                    "tcp_ports",
                    &refs,
                );
                let mut direct = MsgBuf::with_capacity(64 * 1024);
                put_batch_begin(&mut direct, 1, None);
                let (offset, ranges) =
                    put_element_list(&mut direct, msg, flags, 9, ("gearnat", "tcp_ports"), &refs);
                let message = &direct.as_bytes()[offset..];
                assert_eq!(message, by_libnftnl.as_bytes(), "{count} elements");

                let body = netlink::HEADER_LEN + netlink::NFGEN_LEN;
                let list = netlink::attributes(&message[body..])
                    .unwrap()
                    .into_iter()
                    .find(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS);
                let found: Vec<std::ops::Range<usize>> = match list {
                    Some(list) => netlink::attributes(list.value)
                        .unwrap()
                        .iter()
                        .map(|a| {
                            let at = body + list.offset + 4 + a.offset;
                            at..at + a.len
                        })
                        .collect(),
                    None => Vec::new(),
                };
                assert_eq!(ranges, found, "{count} elements");
            }
        }
    }
}
