//! Reading netlink framing from bytes: message headers, acknowledgements and errors (with the
//! extended-ack offset of the attribute the kernel rejected), and nested attributes.

/// NLMSG_ERROR and NLMSG_DONE (<linux/netlink.h>).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Set on an error message that carries extended-ack TLVs.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Set when the error message carries only the header of the failed request.
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_OFFS: u16 = 2;
pub(crate) const HEADER_LEN: usize = 16;
/// nfgenmsg, the nfnetlink header after the netlink one.
pub(crate) const NFGEN_LEN: usize = 4;

/// One netlink message in a received datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub kind: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

/// What a message means to a request waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// NLMSG_ERROR with error 0.
    Ack,
    /// NLMSG_ERROR with an errno, and the offset of the rejected attribute in the request.
    Error {
        errno: i32,
        bad_attr_offset: Option<u32>,
    },
    /// End of a dump.
    Done,
    /// Anything else: a reply object.
    Data,
}

/// Splits a datagram into messages; `None` if a header lies about its length.
pub(crate) fn messages(mut bytes: &[u8]) -> Option<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let len = u32_at(bytes, 0)? as usize;
        if len < HEADER_LEN || len > bytes.len() {
            return None;
        }
        out.push(Message {
            kind: u16_at(bytes, 4)?,
            seq: u32_at(bytes, 8)?,
            bytes: &bytes[..len],
        });
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Some(out)
}

impl Message<'_> {
    pub fn flags(&self) -> u16 {
        u16_at(self.bytes, 6).unwrap_or(0)
    }

    pub fn reply(&self) -> Reply {
        match self.kind {
            NLMSG_ERROR => {
                let errno = i32_at(self.bytes, HEADER_LEN).unwrap_or(-libc::EPROTO);
                if errno == 0 {
                    return Reply::Ack;
                }
                Reply::Error {
                    errno: -errno,
                    bad_attr_offset: self.bad_attr_offset(),
                }
            }
            NLMSG_DONE => match i32_at(self.bytes, HEADER_LEN) {
                Some(errno) if errno < 0 => Reply::Error {
                    errno: -errno,
                    bad_attr_offset: None,
                },
                _ => Reply::Done,
            },
            _ => Reply::Data,
        }
    }

    /// NLMSGERR_ATTR_OFFS of an error message: where in the request the bad attribute starts.
    fn bad_attr_offset(&self) -> Option<u32> {
        let flags = self.flags();
        if flags & NLM_F_ACK_TLVS == 0 {
            return None;
        }
        // error code, then the request's header, then (uncapped) the rest of the request.
        let request_len = if flags & NLM_F_CAPPED != 0 {
            HEADER_LEN
        } else {
            u32_at(self.bytes, HEADER_LEN + 4)? as usize
        };
        let tlvs = self
            .bytes
            .get(HEADER_LEN + 4 + request_len.next_multiple_of(4)..)?;
        attributes(tlvs)?
            .into_iter()
            .find(|a| a.kind == NLMSGERR_ATTR_OFFS)
            .and_then(|a| u32_at(a.value, 0))
    }
}

/// One netlink attribute: its type (without the nested/byte-order flags), where it starts
/// relative to the slice parsed, its whole length, and its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    pub kind: u16,
    // Where it lies: the tests locate attributes in the messages gearnat writes with these.
    #[cfg_attr(not(test), allow(dead_code))]
    pub offset: usize,
    #[cfg_attr(not(test), allow(dead_code))]
    pub len: usize,
    pub value: &'a [u8],
}

/// Splits a run of attributes; `None` if one overruns.
pub(crate) fn attributes(bytes: &[u8]) -> Option<Vec<Attr<'_>>> {
    walk(bytes).collect()
}

/// Walks a run of attributes without collecting them: each item is an attribute, or `None`
/// (and the end of the walk) where one overruns.
pub(crate) fn walk(bytes: &[u8]) -> impl Iterator<Item = Option<Attr<'_>>> {
    let mut at = 0;
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || at + 4 > bytes.len() {
            return None;
        }
        let len = usize::from(u16_at(bytes, at)?);
        if len < 4 || at + len > bytes.len() {
            broken = true;
            return Some(None);
        }
        let kind = u16_at(bytes, at + 2)? & 0x3fff;
        let attr = Attr {
            kind,
            offset: at,
            len,
            value: &bytes[at + 4..at + len],
        };
        at += len.next_multiple_of(4);
        Some(Some(attr))
    })
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(bytes: &[u8], at: usize) -> Option<i32> {
    u32_at(bytes, at).map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&len.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn acks_and_errors() {
        let mut datagram = message(NLMSG_ERROR, 0, 7, &[0; 20]);
        let mut payload = (-17i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&message(0x0a0c, 0, 8, &[])); // the capped request header
        payload.extend_from_slice(&[8, 0, NLMSGERR_ATTR_OFFS as u8, 0]);
        payload.extend_from_slice(&40u32.to_ne_bytes());
        datagram.extend(message(
            NLMSG_ERROR,
            NLM_F_ACK_TLVS | NLM_F_CAPPED,
            8,
            &payload,
        ));
        let msgs = messages(&datagram).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].seq, msgs[0].reply()), (7, Reply::Ack));
        assert_eq!(msgs[1].seq, 8);
        assert_eq!(
            msgs[1].reply(),
            Reply::Error {
                errno: 17,
                bad_attr_offset: Some(40)
            }
        );
    }

    #[test]
    fn lying_lengths_are_rejected() {
        let mut bytes = message(NLMSG_DONE, 0, 1, &[0; 4]);
        bytes[0] = 200;
        assert!(messages(&bytes).is_none());
        assert!(attributes(&[8, 0, 1, 0, 0]).is_none());
    }

    #[test]
    fn nested_attributes() {
        let bytes = [6, 0, 1, 0, 0xaa, 0xbb, 0, 0, 4, 0, 2, 0x80]; // the second is NLA_F_NESTED
        let attrs = attributes(&bytes).unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!((attrs[0].kind, attrs[0].value), (1, &[0xaa, 0xbb][..]));
        assert_eq!((attrs[1].kind, attrs[1].offset, attrs[1].len), (2, 8, 4));
    }
}
