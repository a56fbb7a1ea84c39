//! The deployment file exactly as written, with the position of every value.
//!
//! Built from the JSON tree the way geard's Go decoder filled its structs (keys match
//! regardless of case, `null` is the same as an absent key), with two differences geard's users
//! asked for: an unknown key is an error (with the closest known key suggested), and so is a
//! value of the wrong type. Nothing here checks meaning; `validate` does. The types serialize
//! back in geard's CamelCase, so gearnat can write geard's `Instances` form.

use serde::{Serialize, Serializer};

use super::json::{fold_key, keys_match, Node, Pos, Value};
use super::{Problem, Shown, ShownBare, MAX_CONTAINERS, MAX_PROBLEMS_SHOWN, MAX_PUBLIC_PORTS};

/// A value and where it is in the file. Serializes as the value alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawDeployment {
    pub containers: Vec<RawContainer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<RawInstance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_prefix: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub randomize_ids: Option<Spanned<bool>>,
}

/// One entry of `Containers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawContainer {
    #[serde(skip)]
    pub pos: Pos,
    pub name: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub count: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub public_ports: Vec<RawPublicPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<RawLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<RawEnv>,
    /// geard parsed it and never used it; so does gearnat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Spanned<String>>,
}

/// One entry of a container's `PublicPorts`. `Protocol` is gearnat's extension.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawPublicPort {
    #[serde(skip)]
    pub pos: Pos,
    pub internal: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<String>>,
}

/// One entry of a container's `Links`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawLink {
    #[serde(skip)]
    pub pos: Pos,
    pub to: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_local: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_port: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Spanned<i64>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alias_ports: Vec<RawAliasPort>,
}

/// One entry of a link's `AliasPorts`: the target's internal port, and the port the source
/// dials for it (absent or 0: the same port).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawAliasPort {
    #[serde(skip)]
    pub pos: Pos,
    pub internal: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Spanned<i64>>,
}

/// One entry of an `Environment` list.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawEnv {
    #[serde(skip)]
    pub pos: Pos,
    pub name: Option<Spanned<String>>,
    pub value: Option<Spanned<String>>,
}

/// One entry of `Instances`, the part of geard's output file that records what it deployed.
/// Only `Id` and the ports are used; the rest is kept as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawInstance {
    #[serde(skip)]
    pub pos: Pos,
    pub id: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    /// The host: a string in late geard (`"localhost"`), an object `{Host, Port}` in early geard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<RawInstancePort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_json::Value>,
}

/// One entry of an instance's `Ports`: a public port with the host port geard gave it, and the
/// link address (`Target`) geard chose for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RawInstancePort {
    #[serde(skip)]
    pub pos: Pos,
    pub internal: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<String>>,
    /// `{Host, Port}`, either possibly absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<serde_json::Value>,
}

/// Builds the raw deployment from the JSON tree. Returns it with the problems found, and
/// whether a size limit was exceeded (then the file is refused without further checks).
pub fn build(tree: &Node) -> (RawDeployment, Vec<Problem>, bool) {
    let mut b = Builder {
        problems: Vec::new(),
        limit_hit: false,
    };
    let raw = b.deployment(tree);
    (raw, b.problems, b.limit_hit)
}

struct Builder {
    problems: Vec<Problem>,
    limit_hit: bool,
}

/// An object's members, looked up by the position of their key in the list of known keys.
struct Fields<'n> {
    /// By the index of the key in the list matched against; the rest stay empty.
    found: [Option<&'n Node<'n>>; MAX_KEYS],
}

/// The most keys an object of the format has (a container's).
const MAX_KEYS: usize = 8;

impl<'n> Fields<'n> {
    fn get(&self, i: usize) -> Option<&'n Node<'n>> {
        self.found[i]
    }
}

impl Builder {
    fn problem(&mut self, pos: Pos, message: String) {
        self.problems.push(Problem { pos, message });
    }

    fn wrong_type(&mut self, node: &Node, expected: &str, what: &str) {
        self.problem(
            node.pos,
            format!(
                "expected {expected} for {what}, found {}",
                node.value.kind()
            ),
        );
    }

    /// Matches an object's keys against `keys` (geard's CamelCase spelling), regardless of case.
    /// `what` names the object in messages ("a container"). `None` if it is not an object.
    fn object<'n>(&mut self, node: &'n Node<'n>, what: &str, keys: &[&str]) -> Option<Fields<'n>> {
        let Value::Object(members) = &node.value else {
            self.wrong_type(node, "an object", what);
            return None;
        };
        // On the stack: a file has an object per port, tens of thousands of them.
        assert!(keys.len() <= MAX_KEYS, "{what} has more keys than MAX_KEYS");
        let mut found = [None; MAX_KEYS];
        for m in members {
            match keys.iter().position(|k| keys_match(k, &m.key)) {
                // Go's decoder treats null like an absent key.
                Some(i) if m.value.value != Value::Null => found[i] = Some(&m.value),
                Some(_) => {}
                None => {
                    // Only the first problems are shown; far past them, a did-you-mean is not
                    // worth its edit distances (a hostile file can have 300,000 unknown keys).
                    let suggest = self.problems.len() < 50 * MAX_PROBLEMS_SHOWN;
                    let message = unknown_key(&m.key, what, keys, suggest);
                    self.problem(m.key_pos, message);
                }
            }
        }
        Some(Fields { found })
    }

    /// Reports a key that must be there; `message` says what is missing and how to add it.
    fn require(&mut self, f: &Fields, i: usize, pos: Pos, message: &str) {
        if f.get(i).is_none() {
            self.problem(pos, message.to_string());
        }
    }

    fn string(&mut self, node: Option<&Node>, what: &str) -> Option<Spanned<String>> {
        let node = node?;
        match &node.value {
            Value::String(s) => Some(Spanned {
                value: s.to_string(),
                pos: node.pos,
            }),
            _ => {
                self.wrong_type(node, "a string", what);
                None
            }
        }
    }

    fn bool(&mut self, node: Option<&Node>, what: &str) -> Option<Spanned<bool>> {
        let node = node?;
        match node.value {
            Value::Bool(b) => Some(Spanned {
                value: b,
                pos: node.pos,
            }),
            _ => {
                self.wrong_type(node, "true or false", what);
                None
            }
        }
    }

    /// A whole number. Go decoded these into `int`s, which refuse `1.5` and `1e3`.
    fn int(&mut self, node: Option<&Node>, what: &str) -> Option<Spanned<i64>> {
        let node = node?;
        let Value::Number(text) = &node.value else {
            self.wrong_type(node, "a whole number", what);
            return None;
        };
        if text.contains(['.', 'e', 'E']) {
            self.problem(
                node.pos,
                format!(
                    "expected a whole number for {what}, found {}; remove the fraction",
                    ShownBare(text)
                ),
            );
            return None;
        }
        match text.parse::<i64>() {
            Ok(value) => Some(Spanned {
                value,
                pos: node.pos,
            }),
            Err(_) => {
                self.problem(
                    node.pos,
                    format!("{what} {} is far out of range", ShownBare(text)),
                );
                None
            }
        }
    }

    /// Any JSON value, kept as written (for fields gearnat does not use).
    fn any(&mut self, node: Option<&Node>) -> Option<serde_json::Value> {
        node.map(to_json)
    }

    /// An array's elements; `max`, if given, is a limit on their number.
    fn array<'n>(
        &mut self,
        node: Option<&'n Node<'n>>,
        what: &str,
        max: Option<(usize, &str)>,
    ) -> &'n [Node<'n>] {
        let Some(node) = node else { return &[] };
        let Value::Array(items) = &node.value else {
            self.wrong_type(node, "an array", what);
            return &[];
        };
        if let Some((max, fix)) = max {
            if items.len() > max {
                self.limit_hit = true;
                self.problem(
                    node.pos,
                    format!(
                        "{what} has {} entries, more than gearnat's limit of {max}; {fix}",
                        items.len()
                    ),
                );
                return &[];
            }
        }
        items
    }

    fn deployment(&mut self, node: &Node) -> RawDeployment {
        const KEYS: &[&str] = &["Containers", "Instances", "IdPrefix", "RandomizeIds"];
        let Some(f) = self.object(node, "a deployment file", KEYS) else {
            return RawDeployment::default();
        };
        let limit = (MAX_CONTAINERS, "split the deployment into several files");
        let containers = self.array(f.get(0), "Containers", Some(limit));
        let instances = self.array(f.get(1), "Instances", None);
        RawDeployment {
            containers: containers
                .iter()
                .filter_map(|c| self.container(c))
                .collect(),
            instances: instances.iter().filter_map(|i| self.instance(i)).collect(),
            id_prefix: self.string(f.get(2), "IdPrefix"),
            randomize_ids: self.bool(f.get(3), "RandomizeIds"),
        }
    }

    // Entries that are not objects are reported by `object` and left out, so that nothing
    // more is said about them.
    fn container(&mut self, node: &Node) -> Option<RawContainer> {
        const KEYS: &[&str] = &[
            "Name",
            "Image",
            "Count",
            "PublicPorts",
            "Links",
            "Environment",
            "Affinity",
        ];
        let f = self.object(node, "a container", KEYS)?;
        let missing = "a container without a Name; add one, such as \"Name\": \"web\"";
        self.require(&f, 0, node.pos, missing);
        let mut c = RawContainer {
            pos: node.pos,
            name: self.string(f.get(0), "Name"),
            image: self.string(f.get(1), "Image"),
            count: self.int(f.get(2), "Count"),
            ..Default::default()
        };
        let limit = (MAX_PUBLIC_PORTS, "split the container into several");
        for p in self.array(f.get(3), "PublicPorts", Some(limit)) {
            c.public_ports.extend(self.public_port(p));
        }
        for l in self.array(f.get(4), "Links", None) {
            c.links.extend(self.link(l));
        }
        c.environment = self.environment(f.get(5));
        c.affinity = self.string(f.get(6), "Affinity");
        Some(c)
    }

    fn public_port(&mut self, node: &Node) -> Option<RawPublicPort> {
        const KEYS: &[&str] = &["Internal", "External", "Protocol"];
        let f = self.object(node, "a public port", KEYS)?;
        let missing = "a public port without Internal; add the port the instance listens on, \
                       such as \"Internal\": 8080";
        self.require(&f, 0, node.pos, missing);
        Some(RawPublicPort {
            pos: node.pos,
            internal: self.int(f.get(0), "Internal"),
            external: self.int(f.get(1), "External"),
            protocol: self.string(f.get(2), "Protocol"),
        })
    }

    fn link(&mut self, node: &Node) -> Option<RawLink> {
        const KEYS: &[&str] = &["To", "NonLocal", "MatchPort", "Ports", "AliasPorts"];
        let f = self.object(node, "a link", KEYS)?;
        let missing = "a link without To; add the name of the container to link to, such as \
                       \"To\": \"db\"";
        self.require(&f, 0, node.pos, missing);
        let mut l = RawLink {
            pos: node.pos,
            to: self.string(f.get(0), "To"),
            non_local: self.bool(f.get(1), "NonLocal"),
            match_port: self.bool(f.get(2), "MatchPort"),
            ..Default::default()
        };
        for p in self.array(f.get(3), "Ports", None) {
            l.ports.extend(self.int(Some(p), "a port in Ports"));
        }
        for a in self.array(f.get(4), "AliasPorts", None) {
            if let Some(f) = self.object(a, "an alias port", &["Internal", "External"]) {
                let missing = "an alias port without Internal; add the target's port, such as \
                               \"Internal\": 27017";
                self.require(&f, 0, a.pos, missing);
                l.alias_ports.push(RawAliasPort {
                    pos: a.pos,
                    internal: self.int(f.get(0), "Internal"),
                    external: self.int(f.get(1), "External"),
                });
            }
        }
        Some(l)
    }

    fn environment(&mut self, node: Option<&Node>) -> Vec<RawEnv> {
        let mut out = Vec::new();
        for e in self.array(node, "Environment", None) {
            if let Some(f) = self.object(e, "an environment variable", &["Name", "Value"]) {
                self.require(
                    &f,
                    0,
                    e.pos,
                    "an environment variable without a Name; add one",
                );
                out.push(RawEnv {
                    pos: e.pos,
                    name: self.string(f.get(0), "Name"),
                    value: self.string(f.get(1), "Value"),
                });
            }
        }
        out
    }

    fn instance(&mut self, node: &Node) -> Option<RawInstance> {
        const KEYS: &[&str] = &["Id", "Image", "From", "On", "Ports", "Environment"];
        let f = self.object(node, "an instance", KEYS)?;
        let mut i = RawInstance {
            pos: node.pos,
            id: self.string(f.get(0), "Id"),
            image: self.string(f.get(1), "Image"),
            from: self.string(f.get(2), "From"),
            on: self.any(f.get(3)),
            ports: Vec::new(),
            environment: self.any(f.get(5)),
        };
        for p in self.array(f.get(4), "Ports", None) {
            let keys = &["Internal", "External", "Protocol", "Target"];
            if let Some(f) = self.object(p, "an instance port", keys) {
                let missing = "an instance port without Internal; add it or remove the entry";
                self.require(&f, 0, p.pos, missing);
                i.ports.push(RawInstancePort {
                    pos: p.pos,
                    internal: self.int(f.get(0), "Internal"),
                    external: self.int(f.get(1), "External"),
                    protocol: self.string(f.get(2), "Protocol"),
                    target: self.any(f.get(3)),
                });
            }
        }
        Some(i)
    }
}

/// The message for an unknown key: the closest known key if one is close, else the list.
fn unknown_key(key: &str, what: &str, keys: &[&str], suggest: bool) -> String {
    let closest = closest(key, keys.iter().copied().filter(|_| suggest), fold_key);
    let where_ = if what == "a deployment file" {
        "at the top level".to_string()
    } else {
        format!("in {what}")
    };
    match closest {
        Some(k) => {
            // Suggest in the spelling the file uses: geard's examples are all lower case or
            // all CamelCase.
            let k = if key.chars().any(|c| c.is_ascii_uppercase()) {
                k.to_string()
            } else {
                k.to_lowercase()
            };
            format!("unknown key {} {where_}; did you mean \"{k}\"?", Shown(key))
        }
        None => format!(
            "unknown key {} {where_}; remove it (the keys here are {})",
            Shown(key),
            keys.join(", ")
        ),
    }
}

/// Longest word a did-you-mean is looked for: [`edit_distance`] costs the product of the two
/// lengths, and a hostile file's key or link target can be 64 KiB long.
const MAX_SUGGEST_CHARS: usize = 64;

/// The candidate closest to `word`, compared after `fold`, if it is a typo away: at most a
/// third of the candidate's length (and at least 1) edits.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
    fold: impl Fn(&str) -> String,
) -> Option<&'c str> {
    let short = |s: &str| s.chars().count() <= MAX_SUGGEST_CHARS;
    if !short(word) {
        return None;
    }
    let len = word.chars().count();
    let word = fold(word);
    // The distance is at least the difference in length.
    let near = |c: &str| c.chars().count().abs_diff(len) <= (c.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| short(c) && near(c))
        .map(|c| (edit_distance(&word, &fold(c)), c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .map(|(_, c)| c)
}

/// Edit distance counting an insertion, a deletion, a substitution or a swap of two neighbours
/// as one edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(text) => text
            .parse::<serde_json::Number>()
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_string())),
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Object(members) => serde_json::Value::Object(
            members
                .iter()
                .map(|m| (m.key.to_string(), to_json(&m.value)))
                .collect(),
        ),
    }
}
