//! From the raw file to [`model::Deployment`]: every check of meaning, each problem with the
//! position of the value at fault and a way to fix it.
//!
//! The size limits come first, so a huge file costs nothing more than reading it; then the
//! containers (names, counts, public ports, host port claims), the links, the environment and
//! last the `Instances` of a geard output file, which pin host ports geard already gave.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::rc::Rc;

use super::json::Pos;
use super::raw::{
    closest, RawAliasPort, RawContainer, RawDeployment, RawInstance, RawLink, RawPublicPort,
    Spanned,
};
use super::{Problem, Shown, ShownBare, MAX_COUNT, MAX_LINK_ENTRIES, MAX_MAPPINGS};
use crate::model::{
    Container, Deployment, EnvVar, InstanceNumber, Link, PinnedPort, Proto, PublicPort,
};

/// geard's rule for instance ids (`containers.IdentifierSuffixPattern`).
const ID_RULE: &str = "[a-zA-Z0-9_\\-.]{4,24}";
const ID_MIN: usize = 4;
const ID_MAX: usize = 24;

/// geard's limits on environment variables (`containers.Environment.Check`), in bytes.
const ENV_NAME_MAX: usize = 1024;
const ENV_VALUE_MAX: usize = 8 * 1024;

const PORT_RANGE: &str = "use 1..65535";

pub fn validate(raw: &RawDeployment, name: String) -> Result<Deployment, Vec<Problem>> {
    let mut v = Validator::default();
    let by_name = container_index(raw);
    v.limits(raw, &by_name);
    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    // Sized once, within the limits: claims grow to one per public port.
    v.claims
        .reserve(raw.containers.iter().map(|c| c.public_ports.len()).sum());
    if let Some(r) = raw.randomize_ids.as_ref().filter(|r| r.value) {
        v.problem(
            r.pos,
            "RandomizeIds is not supported: gearnat keeps instance ids stable; remove it",
        );
    }
    let id_prefix = raw
        .id_prefix
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default();
    if let Some(prefix) = &raw.id_prefix {
        if let Some(c) = bad_id_char(&prefix.value) {
            v.problem(
                prefix.pos,
                format!(
                    "IdPrefix {} contains {}, which geard's instance ids may not contain \
                     ({ID_RULE}); use letters, digits, \"_\", \"-\" and \".\"",
                    Shown(&prefix.value),
                    quote_char(c)
                ),
            );
        }
    }
    let mut containers: Vec<Container> = raw
        .containers
        .iter()
        .map(|c| v.container(c, &id_prefix, raw.id_prefix.is_some()))
        .collect();
    v.duplicate_names(raw);
    for (i, c) in raw.containers.iter().enumerate() {
        let links = c
            .links
            .iter()
            .map(|l| v.link(&by_name, &containers, l))
            .collect::<Vec<_>>();
        containers[i].links = links.into_iter().flatten().collect();
        v.duplicate_links(c);
    }
    let pinned = v.pinned(raw, &containers, &id_prefix);
    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    Ok(Deployment {
        name,
        id_prefix,
        containers,
        pinned,
    })
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Host ports claimed so far: (External, protocol) -> who claims it, for messages.
    claims: HashMap<(u16, Proto), (Rc<str>, Pos)>,
    /// The internal ports each link target publishes, by container index, made once.
    published: HashMap<usize, Rc<HashSet<u16>>>,
}

impl Validator {
    fn problem(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            pos,
            message: message.into(),
        });
    }

    /// [`MAX_COUNT`], [`MAX_MAPPINGS`] and [`MAX_LINK_ENTRIES`]; the limits on array lengths
    /// were checked while building the raw file.
    fn limits(&mut self, raw: &RawDeployment, by_name: &HashMap<&str, usize>) {
        let count = |c: &RawContainer| c.count.as_ref().map_or(0, |n| n.value.clamp(0, i64::MAX));
        let mut mappings: u64 = 0;
        for c in &raw.containers {
            if let Some(n) = c.count.as_ref().filter(|n| n.value > i64::from(MAX_COUNT)) {
                self.problem(
                    n.pos,
                    format!(
                        "Count {} is more than gearnat's limit of {MAX_COUNT} instances per \
                         container; lower it",
                        n.value
                    ),
                );
                continue;
            }
            mappings += count(c) as u64 * c.public_ports.len() as u64;
            if mappings > MAX_MAPPINGS {
                self.problem(
                    c.pos,
                    format!(
                        "with this container the deployment has {mappings} mappings (instances x \
                         public ports), more than gearnat's limit of {MAX_MAPPINGS}; lower Count \
                         or split the deployment into several files"
                    ),
                );
                return;
            }
        }
        if !self.problems.is_empty() {
            return;
        }
        let mut entries: u64 = 0;
        for c in &raw.containers {
            for l in &c.links {
                let to = l.to.as_ref().map(|t| t.value.as_str());
                let Some(target) = to.and_then(|t| by_name.get(t)).map(|&i| &raw.containers[i])
                else {
                    continue;
                };
                let linked = if l.ports.is_empty() && l.alias_ports.is_empty() {
                    target.public_ports.len()
                } else {
                    l.ports.len() + l.alias_ports.len()
                };
                entries += count(c) as u64 * count(target) as u64 * linked as u64;
                if entries > MAX_LINK_ENTRIES {
                    self.problem(
                        l.pos,
                        format!(
                            "with this link the deployment has {entries} link entries (source \
                             instances x target instances x linked ports), more than gearnat's \
                             limit of {MAX_LINK_ENTRIES}; lower a Count or link fewer ports"
                        ),
                    );
                    return;
                }
            }
        }
    }

    fn container(&mut self, c: &RawContainer, id_prefix: &str, has_prefix: bool) -> Container {
        let name = c.name.as_ref().map(|n| n.value.clone()).unwrap_or_default();
        let count = match &c.count {
            None => 0,
            Some(n) if n.value < 0 => {
                self.problem(
                    n.pos,
                    format!("Count {} is negative; use 0 or more", n.value),
                );
                0
            }
            // Above MAX_COUNT was refused by `limits`.
            Some(n) => n.value as u32,
        };
        match &c.name {
            // A missing Name was reported with the raw file.
            None => {}
            Some(n) if n.value.is_empty() => self.problem(
                n.pos,
                "the container's Name is empty; give it a name, such as \"web\"",
            ),
            Some(n) => self.instance_ids(n, id_prefix, has_prefix, count),
        }
        let public_ports = self.public_ports(c, &name, count);
        let environment = self.environment(c);
        let image = c
            .image
            .as_ref()
            .map(|i| i.value.clone())
            .filter(|i| !i.is_empty());
        Container {
            name,
            image,
            count,
            public_ports,
            links: Vec::new(),
            environment,
        }
    }

    /// The ids geard would give, `IdPrefix + Name + "-" + N`, must match its [`ID_RULE`].
    fn instance_ids(&mut self, name: &Spanned<String>, prefix: &str, has_prefix: bool, count: u32) {
        if let Some(c) = bad_id_char(&name.value) {
            let slash = if c == '/' {
                " (it would name a path)"
            } else {
                ""
            };
            self.problem(
                name.pos,
                format!(
                    "container name {} contains {}{slash}; instance ids (IdPrefix + Name + \"-\" \
                     + N) must match geard's rule {ID_RULE}: use letters, digits, \"_\", \"-\" \
                     and \".\"",
                    Shown(&name.value),
                    quote_char(c)
                ),
            );
            return;
        }
        let first = format!("{prefix}{}-1", name.value);
        let last = format!("{prefix}{}-{}", name.value, count.max(1));
        let and_prefix = if has_prefix && !prefix.is_empty() {
            " (or IdPrefix)"
        } else {
            ""
        };
        if first.len() < ID_MIN {
            self.problem(
                name.pos,
                format!(
                    "instance id {} has {} characters, fewer than {ID_MIN} (geard's rule \
                     {ID_RULE}); use a longer Name{and_prefix}",
                    Shown(&first),
                    first.len()
                ),
            );
        } else if last.len() > ID_MAX {
            self.problem(
                name.pos,
                format!(
                    "instance id {} has {} characters, more than {ID_MAX} (geard's rule \
                     {ID_RULE}); shorten the Name{and_prefix} by {}",
                    Shown(&last),
                    last.len(),
                    last.len() - ID_MAX
                ),
            );
        }
    }

    fn duplicate_names(&mut self, raw: &RawDeployment) {
        let mut first: HashMap<&str, Pos> = HashMap::default();
        for n in raw.containers.iter().filter_map(|c| c.name.as_ref()) {
            if n.value.is_empty() {
                continue;
            }
            match first.get(n.value.as_str()) {
                Some(p) => self.problem(
                    n.pos,
                    format!(
                        "a second container named {} (the first is at line {}); rename one of \
                         them",
                        Shown(&n.value),
                        p.line
                    ),
                ),
                None => {
                    first.insert(&n.value, n.pos);
                }
            }
        }
    }

    /// The public ports of a container, each Internal once per protocol; an explicit External
    /// is claimed for this container, and only one instance can have it.
    fn public_ports(&mut self, c: &RawContainer, name: &str, count: u32) -> Vec<PublicPort> {
        let mut out: Vec<PublicPort> = Vec::new();
        let mut seen: HashMap<(u16, Proto), Pos> =
            HashMap::with_capacity_and_hasher(c.public_ports.len(), Default::default());
        let who: Rc<str> = format!("container {}", Shown(name)).into();
        for p in &c.public_ports {
            let Some(port) = self.public_port(p) else {
                continue;
            };
            match seen.get(&(port.internal, port.proto)) {
                Some(first) => {
                    let pos = p.internal.as_ref().map_or(p.pos, |i| i.pos);
                    self.problem(
                        pos,
                        format!(
                            "Internal {}/{} is published twice in this container (also at line \
                             {}); remove one of them",
                            port.internal, port.proto, first.line
                        ),
                    );
                }
                None => {
                    seen.insert((port.internal, port.proto), p.pos);
                    if let (Some(external), Some(e)) = (port.external, &p.external) {
                        self.explicit_external(external, port.proto, (name, &who), count, e.pos);
                    }
                    out.push(port);
                }
            }
        }
        out
    }

    fn public_port(&mut self, p: &RawPublicPort) -> Option<PublicPort> {
        let Some(internal) = &p.internal else {
            // Reported with the raw file.
            return None;
        };
        let internal = self.port(internal, PORT_RANGE);
        let external = match &p.external {
            Some(e) if e.value != 0 => self.port(
                e,
                "use 1..65535, or leave External out to let the host pick",
            ),
            _ => None,
        };
        let proto = self.protocol(p.protocol.as_ref());
        Some(PublicPort {
            internal: internal?,
            external,
            proto: proto?,
        })
    }

    /// A port number in 1..65535; `fix` says what to do otherwise.
    fn port(&mut self, n: &Spanned<i64>, fix: &str) -> Option<u16> {
        match u16::try_from(n.value) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.problem(n.pos, format!("port {} is out of range; {fix}", n.value));
                None
            }
        }
    }

    /// `Protocol`, gearnat's extension: "tcp" (the default) or "udp", in any case.
    fn protocol(&mut self, p: Option<&Spanned<String>>) -> Option<Proto> {
        let Some(p) = p else { return Some(Proto::Tcp) };
        match p.value.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => {
                self.problem(
                    p.pos,
                    format!(
                        "unknown Protocol {}; use \"tcp\" or \"udp\"",
                        Shown(&p.value)
                    ),
                );
                None
            }
        }
    }

    /// `(name, who)`: the container's name, and how claims name it.
    fn explicit_external(
        &mut self,
        external: u16,
        proto: Proto,
        (name, who): (&str, &Rc<str>),
        count: u32,
        pos: Pos,
    ) {
        if count > 1 {
            self.problem(
                pos,
                format!(
                    "External {external} would be the host port of all {count} instances of \
                     {}, but a host port reaches one instance; leave External out (the \
                     host picks one per instance) or set Count to 1",
                    Shown(name)
                ),
            );
        }
        // A container with Count 0 has no instance to hold its External, and the host may give
        // that port to another instance (found by fuzzing: the saved file of such a deployment
        // then claimed the port twice and could not be read back).
        if count > 0 {
            self.claim(external, proto, who, pos);
        }
    }

    /// Records a claim on a host port, or reports the clash with an earlier one.
    fn claim(&mut self, external: u16, proto: Proto, who: &Rc<str>, pos: Pos) -> bool {
        match self.claims.get(&(external, proto)) {
            Some((other, at)) => {
                let message = format!(
                    "host port {external}/{proto} is already claimed by {other} (line {}); \
                     choose another External, or leave it out to let the host pick",
                    at.line
                );
                self.problem(pos, message);
                false
            }
            None => {
                self.claims.insert((external, proto), (Rc::clone(who), pos));
                true
            }
        }
    }

    fn environment(&mut self, c: &RawContainer) -> Vec<EnvVar> {
        let mut out = Vec::new();
        for e in &c.environment {
            let name = match &e.name {
                None => continue, // reported with the raw file
                Some(n) if n.value.trim().is_empty() => {
                    self.problem(
                        n.pos,
                        "the environment variable's Name is empty; give it one",
                    );
                    continue;
                }
                Some(n) if n.value.len() > ENV_NAME_MAX => {
                    self.problem(
                        n.pos,
                        format!(
                            "an environment variable Name of {} bytes, more than geard's limit of \
                             {ENV_NAME_MAX}; shorten it",
                            n.value.len()
                        ),
                    );
                    continue;
                }
                Some(n) => n.value.clone(),
            };
            let value = e
                .value
                .as_ref()
                .map(|v| v.value.clone())
                .unwrap_or_default();
            if let Some(v) = e.value.as_ref().filter(|v| v.value.len() > ENV_VALUE_MAX) {
                self.problem(
                    v.pos,
                    format!(
                        "the value of {} has {} bytes, more than geard's limit of \
                         {ENV_VALUE_MAX} (8 KiB); shorten it",
                        ShownBare(&name),
                        v.value.len()
                    ),
                );
                continue;
            }
            out.push(EnvVar { name, value });
        }
        out
    }

    fn link(
        &mut self,
        by_name: &HashMap<&str, usize>,
        containers: &[Container],
        l: &RawLink,
    ) -> Option<Link> {
        let Some(to) = &l.to else {
            // Reported with the raw file.
            return None;
        };
        let Some(&target) = by_name.get(to.value.as_str()) else {
            let message = unknown_container(&to.value, containers);
            self.problem(to.pos, message);
            return None;
        };
        // A container may link to itself: geard's own examples do, for database clusters
        // whose instances dial each other (`{"To": "db", "NonLocal": true, "MatchPort": true}`).
        let t = &containers[target];
        if t.count == 0 {
            self.problem(
                to.pos,
                format!(
                    "link to {}, which has Count 0: nothing to link to; raise its count or \
                     remove the link",
                    Shown(&t.name)
                ),
            );
            return None;
        }
        if t.public_ports.is_empty() {
            self.problem(
                to.pos,
                format!(
                    "link to {name}, which has no public ports; add PublicPorts to {name} or \
                     remove the link",
                    name = Shown(&t.name)
                ),
            );
            return None;
        }
        // Sets beside the lists: a hostile link can name hundreds of thousands of ports, and a
        // file can hold 150,000 links to a container with 10,000 public ports.
        let published = Rc::clone(
            self.published
                .entry(target)
                .or_insert_with(|| Rc::new(t.public_ports.iter().map(|p| p.internal).collect())),
        );
        let mut ports: Vec<u16> = Vec::new();
        let mut listed: HashSet<u16> = HashSet::default();
        let mut ok = true;
        for p in &l.ports {
            match self.linked_port(p, t, &published, "in Ports") {
                Some(port) if !listed.insert(port) => {
                    self.problem(p.pos, format!("port {port} is listed twice; remove one"));
                }
                Some(port) => ports.push(port),
                None => ok = false,
            }
        }
        let mut alias_ports: Vec<(u16, u16)> = Vec::new();
        let mut aliased: HashSet<u16> = HashSet::default();
        for a in &l.alias_ports {
            match self.alias_port(a, t, &published) {
                Some((internal, _)) if aliased.contains(&internal) => {
                    self.problem(
                        a.pos,
                        format!("AliasPorts names port {internal} twice; remove one"),
                    );
                }
                Some((internal, dial)) => {
                    aliased.insert(internal);
                    // geard links a port named only in AliasPorts as well (links.go).
                    if listed.insert(internal) {
                        ports.push(internal);
                    }
                    if let Some(dial) = dial {
                        alias_ports.push((internal, dial));
                    }
                }
                None => ok = false,
            }
        }
        ok.then(|| Link {
            to: to.value.clone(),
            ports,
            alias_ports,
            match_port: l.match_port.as_ref().is_some_and(|m| m.value),
            non_local: l.non_local.as_ref().is_some_and(|n| n.value),
        })
    }

    /// A port the link names: in range and one of the target's public ports (any protocol).
    fn linked_port(
        &mut self,
        p: &Spanned<i64>,
        target: &Container,
        published: &HashSet<u16>,
        what: &str,
    ) -> Option<u16> {
        let port = self.port(p, PORT_RANGE)?;
        if published.contains(&port) {
            return Some(port);
        }
        let mut published: Vec<String> = target
            .public_ports
            .iter()
            .take(10)
            .map(|pp| pp.internal.to_string())
            .collect();
        if target.public_ports.len() > 10 {
            published.push("...".to_string());
        }
        self.problem(
            p.pos,
            format!(
                "port {port} {what} is not a public port of {} (it publishes {}); use one of \
                 those, or add {port} to its PublicPorts",
                Shown(&target.name),
                published.join(", ")
            ),
        );
        None
    }

    /// An alias: (the target's internal port, the port the source dials if not the same).
    fn alias_port(
        &mut self,
        a: &RawAliasPort,
        target: &Container,
        published: &HashSet<u16>,
    ) -> Option<(u16, Option<u16>)> {
        let Some(internal) = &a.internal else {
            // Reported with the raw file.
            return None;
        };
        let internal = self.linked_port(internal, target, published, "in AliasPorts");
        let dial = match &a.external {
            Some(e) if e.value != 0 => Some(self.port(
                e,
                "use 1..65535, or leave External out to dial the target's own port",
            )?),
            _ => None,
        };
        Some((internal?, dial))
    }

    fn duplicate_links(&mut self, c: &RawContainer) {
        let mut first: HashMap<&str, Pos> = HashMap::default();
        for to in c.links.iter().filter_map(|l| l.to.as_ref()) {
            match first.get(to.value.as_str()) {
                Some(p) => self.problem(
                    to.pos,
                    format!(
                        "a second link to {} in this container (the first is at line {}); \
                         merge them into one link",
                        Shown(&to.value),
                        p.line
                    ),
                ),
                None => {
                    first.insert(&to.value, to.pos);
                }
            }
        }
    }

    /// The host ports geard recorded in its output file's `Instances`, for public ports whose
    /// host port the host picks. Instances that name no current instance, and ports no longer
    /// published, are ignored: the next deployment drops them, as geard did.
    fn pinned(
        &mut self,
        raw: &RawDeployment,
        containers: &[Container],
        prefix: &str,
    ) -> Vec<PinnedPort> {
        let by_name: HashMap<&str, usize> = containers
            .iter()
            .enumerate()
            .rev() // the first of two equal names wins, as in geard's Find
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut seen: HashMap<String, Pos> = HashMap::default();
        let mut pinned = Vec::new();
        for inst in &raw.instances {
            let ports = self.instance_ports(inst);
            let Some(id) = &inst.id else { continue };
            if let Some(first) = seen.get(&id.value) {
                self.problem(
                    id.pos,
                    format!(
                        "instance {} is listed twice in Instances (first at line {}); remove \
                         one of them",
                        Shown(&id.value),
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(id.value.clone(), id.pos);
            let Some(instance) = instance_number(&id.value, prefix, &by_name, containers) else {
                continue;
            };
            let picked_by_host: HashSet<(u16, Proto)> = containers[instance.container]
                .public_ports
                .iter()
                .filter(|p| p.external.is_none())
                .map(|p| (p.internal, p.proto))
                .collect();
            let who: Rc<str> = format!("instance {} in Instances", Shown(&id.value)).into();
            for (internal, proto, external, pos) in ports {
                if !picked_by_host.contains(&(internal, proto)) {
                    continue;
                }
                if self.claim(external, proto, &who, pos) {
                    pinned.push(PinnedPort {
                        instance,
                        internal,
                        proto,
                        external,
                    });
                }
            }
        }
        pinned.sort();
        pinned
    }

    /// An instance's ports that carry a host port: (internal, protocol, external, position of
    /// External). Checks every entry, whether or not the instance is still deployed.
    fn instance_ports(&mut self, inst: &RawInstance) -> Vec<(u16, Proto, u16, Pos)> {
        let mut out: Vec<(u16, Proto, u16, Pos)> = Vec::new();
        let mut seen: HashSet<(u16, Proto)> = HashSet::default();
        for p in &inst.ports {
            let Some(internal) = &p.internal else {
                // Reported with the raw file.
                continue;
            };
            let internal = self.port(internal, PORT_RANGE);
            let proto = self.protocol(p.protocol.as_ref());
            let external = match &p.external {
                Some(e) if e.value != 0 => self
                    .port(e, "use 1..65535, or 0 to let the host pick")
                    .map(|x| (x, e.pos)),
                _ => None,
            };
            let (Some(internal), Some(proto), Some((external, pos))) = (internal, proto, external)
            else {
                continue;
            };
            if !seen.insert((internal, proto)) {
                self.problem(
                    p.pos,
                    format!(
                        "Internal {internal}/{proto} appears twice in this instance's Ports; \
                         remove one of them"
                    ),
                );
                continue;
            }
            out.push((internal, proto, external, pos));
        }
        out
    }
}

/// Each container name to the index of the first container with it.
fn container_index(raw: &RawDeployment) -> HashMap<&str, usize> {
    let mut out = HashMap::default();
    for (i, c) in raw.containers.iter().enumerate() {
        if let Some(name) = name_of(c) {
            out.entry(name).or_insert(i);
        }
    }
    out
}

fn name_of(c: &RawContainer) -> Option<&str> {
    c.name
        .as_ref()
        .map(|n| n.value.as_str())
        .filter(|n| !n.is_empty())
}

/// Which instance an id names: `prefix + name + "-" + N` with N in 1..=Count, written as geard
/// wrote it (no leading zeros).
fn instance_number(
    id: &str,
    prefix: &str,
    by_name: &HashMap<&str, usize>,
    containers: &[Container],
) -> Option<InstanceNumber> {
    let (name, n) = id.strip_prefix(prefix)?.rsplit_once('-')?;
    let container = *by_name.get(name)?;
    if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = n.parse().ok()?;
    (1..=containers[container].count)
        .contains(&n)
        .then_some(InstanceNumber { container, n })
}

fn unknown_container(name: &str, containers: &[Container]) -> String {
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let name = Shown(name);
    match closest(name.0, names.iter().copied(), str::to_lowercase) {
        Some(n) => format!(
            "link to unknown container {name}; did you mean {}?",
            Shown(n)
        ),
        None if names.is_empty() => {
            format!("link to unknown container {name}; the file has no containers to link to")
        }
        None => {
            let mut list = names
                .iter()
                .take(10)
                .map(|n| Shown(n).to_string())
                .collect::<Vec<_>>();
            if names.len() > 10 {
                list.push("...".to_string());
            }
            format!(
                "link to unknown container {name}; use the Name of one of the containers ({})",
                list.join(", ")
            )
        }
    }
}

/// The first character geard's instance ids may not contain.
fn bad_id_char(s: &str) -> Option<char> {
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
}

pub(super) fn quote_char(c: char) -> String {
    format!("\"{}\"", c.escape_debug())
}
