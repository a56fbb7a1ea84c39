//! A small JSON reader that remembers where every key and value starts.
//!
//! serde_json reports positions only for syntax errors; gearnat's messages need the line and
//! column of the value that is wrong in meaning too (`port 70000 is out of range`), so the file is
//! first read into a tree of [`Node`]s carrying their [`Pos`]. The grammar is RFC 8259's, with
//! no extensions (no comments, no trailing commas), and three limits that keep a hostile file
//! cheap: [`MAX_DEPTH`], [`MAX_STRING_BYTES`] and the file size limit checked by the caller.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::fmt;

use super::{Problem, Shown, ShownBare};

/// Deepest nesting of arrays and objects accepted. A deployment file needs 5 levels (top,
/// Instances, an instance, its Ports, a Target); the limit keeps recursion bounded.
pub const MAX_DEPTH: usize = 64;

/// Longest string accepted, in bytes after unescaping. The longest string geard accepted is an
/// environment value of 8 KiB.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// A position in the file: 1-based line and column, the column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A JSON value and where it starts. Text borrows from the file where it can: a string
/// without escapes, every number and every such key (a 10,000-port file has 40,000 of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    pub pos: Pos,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number's literal text, exactly as written (`80`, `-1`, `1.5e3`).
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<Member<'a>>),
}

/// One `"key": value` pair of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<'a> {
    pub key: Cow<'a, str>,
    pub key_pos: Pos,
    pub value: Node<'a>,
}

impl Value<'_> {
    /// What kind of value this is, with its article, for messages ("found a string").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Folds a key the way Go's encoding/json compares field names: ASCII case-insensitively, with
/// the Kelvin sign and the long s equal to `k` and `s` (Go's `foldFunc`). Every key gearnat
/// knows is ASCII, so no other character can make two keys equal.
pub fn fold_key(key: &str) -> String {
    key.chars().map(fold_char).collect()
}

/// Whether two keys are equal under [`fold_key`], without building either folded key.
pub fn keys_match(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

fn fold_char(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    }
}

/// Reads one JSON document. Returns the tree (unless a syntax error stopped the reader) and the
/// problems found: at most one syntax error, which ends reading, and any duplicate keys.
pub fn read(source: &str) -> (Option<Node<'_>>, Vec<Problem>) {
    let mut reader = Reader {
        src: source,
        bytes: source.as_bytes(),
        i: 0,
        line: 1,
        col: 1,
        depth: 0,
        problems: Vec::new(),
    };
    // Editors on Windows write a byte order mark; it carries no meaning in UTF-8.
    if source.starts_with('\u{FEFF}') {
        reader.i = 3;
    }
    let result = reader.document();
    let mut problems = reader.problems;
    match result {
        Ok(node) => (Some(node), problems),
        Err(syntax) => {
            problems.push(syntax);
            (None, problems)
        }
    }
}

struct Reader<'a> {
    src: &'a str,
    bytes: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
    depth: usize,
    problems: Vec<Problem>,
}

type Parsed<T> = Result<T, Problem>;

/// Objects up to this many members find duplicate keys by comparing with each earlier key.
const SMALL_OBJECT: usize = 16;

/// Where a key equal to `key` (under [`fold_key`]) first occurs among an object's `members`,
/// or `None`, in which case `key` at `pos` is remembered as the first of its kind. `seen` takes
/// over from scanning `members` once the object is past [`SMALL_OBJECT`].
fn first_occurrence(
    seen: &mut Option<HashMap<String, Pos>>,
    members: &[Member<'_>],
    key: &str,
    pos: Pos,
) -> Option<Pos> {
    if seen.is_none() && members.len() < SMALL_OBJECT {
        return members
            .iter()
            .find(|m| keys_match(&m.key, key))
            .map(|m| m.key_pos);
    }
    let seen = seen.get_or_insert_with(|| {
        members
            .iter()
            .map(|m| (fold_key(&m.key), m.key_pos))
            .collect()
    });
    match seen.entry(fold_key(key)) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(slot) => {
            slot.insert(pos);
            None
        }
    }
}

impl<'a> Reader<'a> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            // Count characters, not bytes: continuation bytes do not move the column.
            self.col += 1;
        }
        Some(b)
    }

    fn error(&self, pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            pos,
            message: message.into(),
        }
    }

    /// The character at the reader, for messages.
    fn found(&self) -> String {
        match self.src[self.i..].chars().next() {
            None => "the end of the file".to_string(),
            Some(c) if c.is_control() => format!("character U+{:04X}", c as u32),
            Some(c) => format!("`{c}`"),
        }
    }

    fn skip_space(&mut self) -> Parsed<()> {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.bump();
                }
                b'/' if matches!(self.bytes.get(self.i + 1), Some(b'/' | b'*')) => {
                    return Err(self.error(
                        self.pos(),
                        "comments are not allowed in JSON; remove the comment",
                    ));
                }
                _ => break,
            }
        }
        Ok(())
    }

    fn document(&mut self) -> Parsed<Node<'a>> {
        self.skip_space()?;
        if self.peek().is_none() {
            return Err(self.error(
                self.pos(),
                "the file is empty; a deployment file is a JSON object such as {\"Containers\": []}",
            ));
        }
        let node = self.value()?;
        self.skip_space()?;
        if self.peek().is_some() {
            return Err(self.error(
                self.pos(),
                format!(
                    "unexpected {} after the end of the JSON document; remove everything after \
                     the closing bracket",
                    self.found()
                ),
            ));
        }
        Ok(node)
    }

    fn value(&mut self) -> Parsed<Node<'a>> {
        let pos = self.pos();
        let value = match self.peek() {
            Some(b'{') => self.nested(Self::object)?,
            Some(b'[') => self.nested(Self::array)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
            Some(b'a'..=b'z' | b'A'..=b'Z') => self.word()?,
            Some(b'\'') => {
                return Err(self.error(pos, "strings must be in double quotes, not single quotes"))
            }
            None => {
                return Err(self.error(
                    pos,
                    "the file ends where a value was expected; the file may be cut short",
                ))
            }
            Some(_) => {
                return Err(self.error(
                    pos,
                    format!(
                        "expected a value (object, array, string, number, true, false or null), \
                         found {}",
                        self.found()
                    ),
                ))
            }
        };
        Ok(Node { pos, value })
    }

    fn nested(&mut self, read: fn(&mut Self) -> Parsed<Value<'a>>) -> Parsed<Value<'a>> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                self.pos(),
                format!(
                    "arrays and objects are nested more than {MAX_DEPTH} deep; a deployment file \
                     needs no more than 5 levels"
                ),
            ));
        }
        self.depth += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    /// After a `,`: refuses `,]` and `,}`, which Go's encoding/json refuses too.
    fn no_trailing_comma(&mut self, close: u8) -> Parsed<()> {
        self.skip_space()?;
        if self.peek() == Some(close) {
            return Err(self.error(
                self.pos(),
                format!(
                    "a comma before `{}`; remove the trailing comma",
                    close as char
                ),
            ));
        }
        Ok(())
    }

    fn end_of_file(&self, inside: &str, expected: &str) -> Problem {
        self.error(
            self.pos(),
            format!(
                "the file ends inside {inside}; expected {expected} (the file may be cut short)"
            ),
        )
    }

    fn array(&mut self) -> Parsed<Value<'a>> {
        self.bump(); // [
        let mut items = Vec::new();
        self.skip_space()?;
        if self.peek() == Some(b']') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_space()?;
            items.push(self.value()?);
            self.skip_space()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                    self.no_trailing_comma(b']')?;
                }
                Some(b']') => {
                    self.bump();
                    return Ok(Value::Array(items));
                }
                None => return Err(self.end_of_file("an array", "`,` or `]`")),
                Some(_) => {
                    return Err(self.error(
                        self.pos(),
                        format!(
                            "expected `,` or `]` after an array element, found {}; add the \
                             missing comma or bracket",
                            self.found()
                        ),
                    ))
                }
            }
        }
    }

    fn object(&mut self) -> Parsed<Value<'a>> {
        self.bump(); // {
        let mut members: Vec<Member<'a>> = Vec::with_capacity(2);
        // Folded key -> position of its first occurrence, kept once the object is larger than
        // a deployment's objects ever are (a hostile one can have hundreds of thousands of keys);
        // below that, comparing with the members read so far costs less than a map.
        let mut seen: Option<HashMap<String, Pos>> = None;
        self.skip_space()?;
        if self.peek() == Some(b'}') {
            self.bump();
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_space()?;
            let key_pos = self.pos();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.end_of_file("an object", "a key in double quotes")),
                Some(_) => {
                    return Err(self.error(
                        key_pos,
                        format!("expected a key in double quotes, found {}", self.found()),
                    ))
                }
            }
            let key = self.string()?;
            self.skip_space()?;
            match self.peek() {
                Some(b':') => {
                    self.bump();
                }
                None => return Err(self.end_of_file("an object", "`:` after the key")),
                Some(_) => {
                    return Err(self.error(
                        self.pos(),
                        format!(
                            "expected `:` after the key {}, found {}",
                            Shown(&key),
                            self.found()
                        ),
                    ))
                }
            }
            self.skip_space()?;
            let value = self.value()?;
            // Go's encoding/json keeps the last of two equal keys without a word; a duplicate
            // is almost always an edit gone wrong, so it is refused.
            match first_occurrence(&mut seen, &members, &key, key_pos) {
                Some(first) => self.problems.push(self.error(
                    key_pos,
                    format!(
                        "duplicate key {} (keys match regardless of case; the first is at \
                         line {}, column {}); remove one of them",
                        Shown(&key),
                        first.line,
                        first.col
                    ),
                )),
                None => {
                    members.push(Member {
                        key,
                        key_pos,
                        value,
                    });
                }
            }
            self.skip_space()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                    self.no_trailing_comma(b'}')?;
                }
                Some(b'}') => {
                    self.bump();
                    return Ok(Value::Object(members));
                }
                None => return Err(self.end_of_file("an object", "`,` or `}`")),
                Some(_) => {
                    return Err(self.error(
                        self.pos(),
                        format!(
                            "expected `,` or `}}` after an object member, found {}; add the \
                             missing comma or brace",
                            self.found()
                        ),
                    ))
                }
            }
        }
    }

    /// A string, borrowed from the file unless it has escapes.
    fn string(&mut self) -> Parsed<Cow<'a, str>> {
        let start = self.pos();
        self.bump(); // "
        let first = self.i;
        // Only once an escape is met is the string copied.
        let mut out: Option<String> = None;
        loop {
            let run = self.i;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.bump();
            }
            // The run ends before an ASCII byte (or at the end), so it is whole characters.
            if let Some(out) = &mut out {
                out.push_str(&self.src[run..self.i]);
            }
            let len = out.as_ref().map_or(self.i - first, String::len);
            if len > MAX_STRING_BYTES {
                return Err(self.error(
                    start,
                    format!(
                        "a string longer than {MAX_STRING_BYTES} bytes; no value in a deployment \
                         file needs to be this long"
                    ),
                ));
            }
            match self.peek() {
                Some(b'"') => {
                    let text = match out {
                        Some(out) => Cow::Owned(out),
                        None => Cow::Borrowed(&self.src[first..self.i]),
                    };
                    self.bump();
                    return Ok(text);
                }
                Some(b'\\') => {
                    let src = self.src;
                    let at = self.i;
                    let text = out.get_or_insert_with(|| src[first..at].to_string());
                    text.push(self.escape()?);
                }
                Some(b'\n') => {
                    return Err(self.error(
                        self.pos(),
                        "a line break inside a string; close the string with `\"` or write the \
                         line break as \\n",
                    ))
                }
                Some(b) => {
                    return Err(self.error(
                        self.pos(),
                        format!(
                            "control character U+{b:04X} inside a string; write it as \\u{b:04X}"
                        ),
                    ))
                }
                None => {
                    return Err(
                        self.error(start, "this string is never closed; add the closing `\"`")
                    )
                }
            }
        }
    }

    fn escape(&mut self) -> Parsed<char> {
        let pos = self.pos();
        self.bump(); // backslash
        let c = match self.bump() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.unicode_escape(pos),
            None => return Err(self.end_of_file("a string", "an escape after `\\`")),
            Some(_) => return Err(self.error(
                pos,
                "invalid escape in a string; the escapes are \\\" \\\\ \\/ \\b \\f \\n \\r \\t \
                     and \\uXXXX (write a backslash as \\\\)",
            )),
        };
        Ok(c)
    }

    fn hex4(&mut self, pos: Pos) -> Parsed<u32> {
        let mut n = 0;
        for _ in 0..4 {
            let digit = self.peek().and_then(|b| (b as char).to_digit(16));
            match digit {
                Some(d) => {
                    self.bump();
                    n = n * 16 + d;
                }
                None => {
                    return Err(self.error(
                        pos,
                        "invalid \\u escape; write \\u and exactly four hex digits (\\u00e9)",
                    ))
                }
            }
        }
        Ok(n)
    }

    /// `\uXXXX`, with UTF-16 surrogate pairs (`\ud83d\ude00`) joined into one character.
    fn unicode_escape(&mut self, pos: Pos) -> Parsed<char> {
        let high = self.hex4(pos)?;
        let lone = |r: &Self| {
            r.error(
                pos,
                "a \\u escape encodes half of a UTF-16 surrogate pair without the other half; \
                 write the character itself or both halves (\\ud83d\\ude00)",
            )
        };
        let code = match high {
            0xD800..=0xDBFF => {
                if self.bytes.get(self.i..self.i + 2) != Some(b"\\u") {
                    return Err(lone(self));
                }
                self.bump();
                self.bump();
                let low = self.hex4(pos)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(lone(self));
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(lone(self)),
            n => n,
        };
        char::from_u32(code).ok_or_else(|| lone(self))
    }

    /// A number, returned as its literal text; RFC 8259 grammar.
    fn number(&mut self) -> Parsed<&'a str> {
        let start = self.i;
        let pos = self.pos();
        if self.peek() == Some(b'-') {
            self.bump();
        }
        let digits = |r: &mut Self| {
            let from = r.i;
            while matches!(r.peek(), Some(b'0'..=b'9')) {
                r.bump();
            }
            r.i - from
        };
        let first = self.peek();
        let int_digits = digits(self);
        let invalid = |r: &mut Self| {
            while r
                .peek()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
            {
                r.bump();
            }
            let text = &r.src[start..r.i];
            r.error(
                pos,
                format!(
                    "invalid number `{}`; write numbers like 80, -1 or 1.5 (no leading zeros)",
                    ShownBare(text)
                ),
            )
        };
        if int_digits == 0 || (first == Some(b'0') && int_digits > 1) {
            return Err(invalid(self));
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if digits(self) == 0 {
                return Err(invalid(self));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(invalid(self));
            }
        }
        if matches!(self.peek(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'.')) {
            return Err(invalid(self));
        }
        Ok(&self.src[start..self.i])
    }

    fn word(&mut self) -> Parsed<Value<'a>> {
        let pos = self.pos();
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_')
        ) {
            self.bump();
        }
        match &self.src[start..self.i] {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            word => {
                let hint = match word.to_ascii_lowercase().as_str() {
                    "true" | "false" | "null" => {
                        "JSON's literals are lower case: true, false, null"
                    }
                    _ => "strings must be in double quotes; JSON's literals are true, false, null",
                };
                Err(self.error(
                    pos,
                    format!("unexpected word `{}`; {hint}", ShownBare(word)),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Node<'_> {
        let (node, problems) = read(src);
        assert!(problems.is_empty(), "{problems:?}");
        node.unwrap()
    }

    /// The single problem reading `src` gives, as `line:col: message`.
    fn err(src: &str) -> String {
        let (_, problems) = read(src);
        assert_eq!(problems.len(), 1, "{problems:?}");
        format!("{}: {}", problems[0].pos, problems[0].message)
    }

    #[test]
    fn values_and_positions() {
        let node = ok("{\n  \"a\": [1, -2.5e3, true, false, null],\n  \"b\": \"x\"\n}");
        let Value::Object(members) = node.value else {
            panic!()
        };
        assert_eq!(members[0].key, "a");
        assert_eq!(members[0].key_pos, Pos { line: 2, col: 3 });
        assert_eq!(members[0].value.pos, Pos { line: 2, col: 8 });
        let Value::Array(items) = &members[0].value.value else {
            panic!()
        };
        assert_eq!(items[1].value, Value::Number("-2.5e3"));
        assert_eq!(items[1].pos, Pos { line: 2, col: 12 });
        assert_eq!(items[4].value, Value::Null);
        assert_eq!(members[1].value.value, Value::String("x".into()));
        assert_eq!(members[1].value.pos, Pos { line: 3, col: 8 });
    }

    #[test]
    fn columns_count_characters() {
        let node = ok("[\"é日本\", 1]");
        let Value::Array(items) = node.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos { line: 1, col: 9 });
    }

    #[test]
    fn escapes() {
        let node = ok(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00""#);
        assert_eq!(
            node.value,
            Value::String("a\"b\\c/d\u{8}\u{c}\n\r\té😀".into())
        );
        // Text before, between and after escapes is kept; a string without any borrows.
        let node = ok(r#"["ab\ncd\tef", "\u00e9x", "plain"]"#);
        let Value::Array(items) = node.value else {
            panic!()
        };
        assert_eq!(items[0].value, Value::String("ab\ncd\tef".into()));
        assert_eq!(items[1].value, Value::String("éx".into()));
        assert!(matches!(
            &items[2].value,
            Value::String(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(ok("\u{FEFF}{}").pos, Pos { line: 1, col: 1 });
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            err("{\"a\": 1"),
            "1:8: the file ends inside an object; expected `,` or `}` (the file may be cut short)"
        );
        assert_eq!(
            err("{\"a\": [1, 2"),
            "1:12: the file ends inside an array; expected `,` or `]` (the file may be cut short)"
        );
        assert_eq!(
            err("{\"a\": \"x"),
            "1:7: this string is never closed; add the closing `\"`"
        );
        assert_eq!(
            err("{} x"),
            "1:4: unexpected `x` after the end of the JSON document; remove everything after the \
             closing bracket"
        );
        assert!(err(r#"["\x"]"#).starts_with("1:3: invalid escape in a string;"));
        assert!(err(r#"["\u12"]"#).starts_with("1:3: invalid \\u escape;"));
        assert!(err(r#"["\ud83d"]"#).starts_with("1:3: a \\u escape encodes half"));
        assert!(err(r#"["\ude00"]"#).starts_with("1:3: a \\u escape encodes half"));
        assert!(err(r#"["\ud83d\u0041"]"#).starts_with("1:3: a \\u escape encodes half"));
        assert_eq!(
            err("[1,]"),
            "1:4: a comma before `]`; remove the trailing comma"
        );
        assert_eq!(
            err("{\"a\":1,}"),
            "1:8: a comma before `}`; remove the trailing comma"
        );
        assert!(err("[01]").starts_with("1:2: invalid number `01`"));
        assert!(err("[1.]").starts_with("1:2: invalid number `1.`"));
        assert!(err("[-]").starts_with("1:2: invalid number `-`"));
        assert!(err("[1x]").starts_with("1:2: invalid number `1x`"));
        assert_eq!(
            err("[True]"),
            "1:2: unexpected word `True`; JSON's literals are lower case: true, false, null"
        );
        assert!(err("{a: 1}").starts_with("1:2: expected a key in double quotes, found `a`"));
        assert!(err("{\"a\" 1}").starts_with("1:6: expected `:` after the key \"a\""));
        assert!(err("['a']").starts_with("1:2: strings must be in double quotes"));
        assert!(err("// c\n{}").starts_with("1:1: comments are not allowed"));
        assert!(err("[\"a\nb\"]").starts_with("1:4: a line break inside a string"));
        assert!(err("[\"a\tb\"]").starts_with("1:4: control character U+0009"));
        assert!(err("  ").starts_with("1:3: the file is empty"));
        assert!(err("[1 2]").starts_with("1:4: expected `,` or `]`"));
        assert!(err("{\"a\":1 \"b\":2}").starts_with("1:8: expected `,` or `}`"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let ok_depth = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        ok(&ok_depth);
        let deep = "[".repeat(100_000);
        assert!(err(&deep).starts_with("1:65: arrays and objects are nested more than 64 deep"));
    }

    #[test]
    fn huge_strings_are_refused() {
        let huge = format!("[\"{}\"]", "a".repeat(MAX_STRING_BYTES + 1));
        assert!(err(&huge).starts_with("1:2: a string longer than 65536 bytes"));
        let escaped = format!("[\"{}\"]", "\\n".repeat(MAX_STRING_BYTES + 1));
        assert!(err(&escaped).starts_with("1:2: a string longer than 65536 bytes"));
    }

    #[test]
    fn duplicate_keys_regardless_of_case() {
        let (node, problems) = read("{\"Count\": 1,\n \"\u{212A}ey\": 2, \"count\": 3}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            format!("{}: {}", problems[0].pos, problems[0].message),
            "2:12: duplicate key \"count\" (keys match regardless of case; the first is at line 1, \
             column 2); remove one of them"
        );
        // The first value is kept.
        let Value::Object(members) = node.unwrap().value else {
            panic!()
        };
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].value.value, Value::Number("1"));
    }

    #[test]
    fn duplicate_keys_in_large_objects() {
        // Duplicates of keys seen before and after the object outgrows the member scan.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        let text = format!(
            "{{{}, \"K3\": 0, \"k\u{17F}\": 1, \"k39\": 2, \"\u{17F}\": 3}}",
            keys.join(", ")
        );
        let (node, problems) = read(&text);
        let duplicates: Vec<&str> = problems
            .iter()
            .map(|p| p.message.split(" (").next().unwrap())
            .collect();
        assert_eq!(
            duplicates,
            ["duplicate key \"K3\"", "duplicate key \"k39\""],
            "{problems:?}"
        );
        let Value::Object(members) = node.unwrap().value else {
            panic!()
        };
        assert_eq!(members.len(), 42);
        // Below the threshold the same keys are found by the scan.
        let (_, problems) = read("{\"\u{17F}\": 1, \"S\": 2}");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn go_folding() {
        assert_eq!(fold_key("ContainerS"), "containers");
        assert_eq!(fold_key("\u{212A}ey"), "key");
        assert_eq!(fold_key("Containe\u{017F}"), "containes");
    }
}
