//! libnftnl's userdata format: the opaque bytes the kernel keeps for nft in tables, sets and
//! elements (NFTA_*_USERDATA), holding comments and type hints.
//!
//! The format is a run of TLVs, one byte type, one byte length, then the value (libnftnl's
//! `struct nftnl_udata`); numbers are host-endian u32s; strings carry their trailing NUL in the
//! length. nft reads comments back only from this encoding, so gearnat writes it byte for byte.

/// `NFTNL_UDATA_TABLE_COMMENT` and `NFTNL_UDATA_SET_ELEM_COMMENT`: both are type 0.
pub(crate) const COMMENT: u8 = 0;
/// nft refuses longer comments (`NFTNL_UDATA_COMMENT_MAXLEN`); keeping to it keeps `render`'s
/// output loadable.
pub const COMMENT_MAX_LEN: usize = 128;

// Set userdata types (libnftnl's `enum nftnl_udata_set_types`).
const SET_KEYBYTEORDER: u8 = 0;
const SET_DATABYTEORDER: u8 = 1;
const SET_KEY_TYPEOF: u8 = 3;
const SET_DATA_TYPEOF: u8 = 4;
const SET_DATA_INTERVAL: u8 = 6;
const SET_TYPEOF_EXPR: u8 = 0;
const SET_TYPEOF_DATA: u8 = 1;
/// nft's `BYTEORDER_BIG_ENDIAN`; a concatenation has no single byte order and gets 0 (invalid).
const BIG_ENDIAN: u32 = 2;
const NO_BYTEORDER: u32 = 0;
/// nft's expression type number for a concatenation, stored as the typeof hint of a concatenated
/// key or data with no member expressions (a `type a . b` declaration rather than `typeof`).
const EXPR_CONCAT: u32 = 13;

/// One TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// Appends one TLV; `value` must fit its one-byte length.
pub(crate) fn put(buf: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let len = u8::try_from(value.len()).expect("userdata values are at most 255 bytes");
    buf.push(kind);
    buf.push(len);
    buf.extend_from_slice(value);
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, kind: u8, value: u32) {
    put(buf, kind, &value.to_ne_bytes());
}

/// Appends a NUL-terminated string; `None` when it does not fit (over 254 bytes or with a NUL).
pub(crate) fn put_strz(buf: &mut Vec<u8>, kind: u8, value: &str) -> Option<()> {
    if value.len() > 254 || value.contains('\0') {
        return None;
    }
    let mut bytes = Vec::with_capacity(value.len() + 1);
    bytes.extend_from_slice(value.as_bytes());
    bytes.push(0);
    put(buf, kind, &bytes);
    Some(())
}

/// Splits userdata into its TLVs; `None` if a length runs past the end.
pub(crate) fn parse(mut data: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut tlvs = Vec::new();
    while !data.is_empty() {
        let [kind, len, rest @ ..] = data else {
            return None;
        };
        let len = usize::from(*len);
        if rest.len() < len {
            return None;
        }
        tlvs.push(Tlv {
            kind: *kind,
            value: &rest[..len],
        });
        data = &rest[len..];
    }
    Some(tlvs)
}

/// Userdata holding just a comment, as nft writes it for tables and elements.
pub(crate) fn comment(text: &str) -> Option<Vec<u8>> {
    if text.len() > COMMENT_MAX_LEN {
        return None;
    }
    let mut buf = Vec::with_capacity(text.len() + 3);
    put_strz(&mut buf, COMMENT, text)?;
    Some(buf)
}

/// The comment in userdata, if it has a well-formed one.
pub(crate) fn read_comment(data: &[u8]) -> Option<String> {
    let tlv = parse(data)?.into_iter().find(|t| t.kind == COMMENT)?;
    let text = tlv.value.strip_suffix(&[0])?;
    String::from_utf8(text.to_vec()).ok()
}

/// The set userdata nft 1.0.6 writes for `map { type K : ipv4_addr . inet_service; }`, where K
/// is `inet_service` or, with `concat_key`, `ipv4_addr . inet_service`.
pub(crate) fn map_userdata(concat_key: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(48);
    put_u32(
        &mut buf,
        SET_KEYBYTEORDER,
        if concat_key { NO_BYTEORDER } else { BIG_ENDIAN },
    );
    put_u32(&mut buf, SET_DATABYTEORDER, NO_BYTEORDER);
    if concat_key {
        put(&mut buf, SET_KEY_TYPEOF, &concat_typeof());
    }
    put(&mut buf, SET_DATA_TYPEOF, &concat_typeof());
    put_u32(&mut buf, SET_DATA_INTERVAL, 0);
    buf
}

fn concat_typeof() -> Vec<u8> {
    let mut nest = Vec::with_capacity(8);
    put_u32(&mut nest, SET_TYPEOF_EXPR, EXPR_CONCAT);
    put(&mut nest, SET_TYPEOF_DATA, &[]);
    nest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_type_zero_with_nul() {
        let bytes = comment("gearnat:seed/rockmongo-1").unwrap();
        // As nft's debug output shows it: `userdata = { \x00\x19gearnat:seed/rockmongo-1\x00 }`.
        let mut expected = vec![0, 0x19];
        expected.extend_from_slice(b"gearnat:seed/rockmongo-1\0");
        assert_eq!(bytes, expected);
        assert_eq!(
            read_comment(&bytes).as_deref(),
            Some("gearnat:seed/rockmongo-1")
        );
    }

    #[test]
    fn comment_limits() {
        assert!(comment(&"x".repeat(COMMENT_MAX_LEN)).is_some());
        assert!(comment(&"x".repeat(COMMENT_MAX_LEN + 1)).is_none());
        assert!(comment("a\0b").is_none());
        assert_eq!(read_comment(&comment("").unwrap()).as_deref(), Some(""));
    }

    #[test]
    fn malformed_userdata_reads_as_no_comment() {
        assert_eq!(read_comment(&[0, 5, b'a']), None);
        assert_eq!(read_comment(&[0, 2, b'a', b'b']), None); // no NUL
        assert_eq!(read_comment(&[1, 2, b'a', 0]), None); // another type
        assert_eq!(read_comment(&[0, 2, 0xff, 0]), None); // not UTF-8
        assert_eq!(read_comment(&[]), None);
    }

    #[test]
    fn parse_finds_every_tlv() {
        let mut buf = Vec::new();
        put_u32(&mut buf, 6, 7);
        put(&mut buf, 1, &[]);
        put_strz(&mut buf, 0, "x").unwrap();
        let tlvs = parse(&buf).unwrap();
        assert_eq!(tlvs.len(), 3);
        assert_eq!(
            tlvs[0],
            Tlv {
                kind: 6,
                value: &7u32.to_ne_bytes()
            }
        );
        assert_eq!(
            tlvs[1],
            Tlv {
                kind: 1,
                value: &[]
            }
        );
        assert_eq!(
            tlvs[2],
            Tlv {
                kind: 0,
                value: b"x\0"
            }
        );
    }

    /// Byte for byte what nft 1.0.6 sent for the maps of both layouts (`nft --debug=mnl`, on a
    /// little-endian host).
    #[cfg(target_endian = "little")]
    #[test]
    fn map_userdata_matches_nft() {
        let host = [
            0x00, 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x08,
            0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(map_userdata(false), host);
        let instance = [
            0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x08,
            0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x04, 0x08, 0x00, 0x04, 0x0d, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(map_userdata(true), instance);
    }
}
