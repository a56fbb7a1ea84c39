//! What gearnat prints: plans as lines a person reads, or JSON for scripts, and the resolved
//! mappings the way geard's deploy log showed them.

use std::fmt::Write;
use std::net::SocketAddrV4;

use serde_json::{json, Value};

use crate::plan::{ContainerAction, NsPlan, Plan, Wiring};
use crate::resolve::Resolved;
use crate::ruleset::Element;

/// One line per change: `+` added, `-` removed, `~` changed.
pub fn plan_lines(plan: &Plan, bridge: &str) -> Vec<String> {
    let mut out = Vec::new();
    if plan.create_bridge {
        out.push(format!("+ bridge {bridge}"));
    }
    for (id, action) in &plan.containers {
        out.push(container_line(id, action));
    }
    for (id, w) in &plan.wiring {
        match w {
            Wiring::Join { address, .. } if plan.docker => {
                out.push(format!("+ wiring of container {id} {address} on {bridge}"));
            }
            Wiring::Remove { .. } if plan.containers.contains_key(id) => {}
            Wiring::Remove { .. } if plan.docker => {
                out.push(format!("- wiring of container {id}"));
            }
            Wiring::Join {
                create_netns,
                address,
            } => {
                let what = if *create_netns {
                    "netns (new)"
                } else {
                    "netns"
                };
                out.push(format!("+ {what} {id} {address} on {bridge}"));
            }
            Wiring::Remove { delete_netns } => {
                let what = if *delete_netns {
                    "netns"
                } else {
                    "wiring of netns"
                };
                out.push(format!("- {what} {id}"));
            }
        }
    }
    ns_lines(&mut out, "host", &plan.host);
    for (id, ns) in &plan.instances {
        ns_lines(&mut out, id, ns);
    }
    out
}

/// `+ container web-1 image X`, `~ container web-1 (image changed)`, `- container web-2`.
pub fn container_line(id: &str, action: &ContainerAction) -> String {
    match action {
        ContainerAction::Create { spec } => format!("+ container {id} image {}", spec.image),
        ContainerAction::Recreate { spec, reason } => {
            format!("~ container {id} ({reason}) image {}", spec.image)
        }
        ContainerAction::Start => format!("~ container {id} (stopped) start"),
        ContainerAction::Remove => format!("- container {id}"),
    }
}

fn ns_lines(out: &mut Vec<String>, ns: &str, p: &NsPlan) {
    if p.table.delete_table {
        out.push(format!("- {ns} table ip gearnat"));
    }
    if p.table.create.is_some() {
        out.push(format!("+ {ns} table ip gearnat"));
    }
    // `- host tcp 6060 -> ...`, `- host conntrack udp 5353 -> ...`
    let line = |sign: &str, what: &str, e: &Element| {
        let mut line = String::with_capacity(64);
        for part in [sign, " ", ns, " ", what] {
            line.push_str(part);
        }
        push_element(&mut line, e);
        line
    };
    out.extend(p.table.remove.iter().map(|e| line("-", "", e)));
    out.extend(p.table.add.iter().map(|e| line("+", "", e)));
    out.extend(p.stale_flows.iter().map(|e| line("-", "conntrack ", e)));
    for s in &p.sysctls {
        let from = s.from.as_deref().map_or("unset", str::trim);
        out.push(format!("~ {ns} sysctl {} {from} -> {}", s.key, s.to));
    }
}

/// `tcp 6060 -> rockmongo-1 10.211.0.2:80` or `tcp 127.0.0.1:27017 -> 10.211.0.1:4000`.
pub fn element_text(e: &Element) -> String {
    let mut out = String::with_capacity(48);
    push_element(&mut out, e);
    out
}

/// [`element_text`], appended to `out`. Put together by hand rather than with `format!`: a plan
/// of 10,000 mappings has 10,000 of these lines, and formatting their numbers and addresses
/// through `fmt` cost more than all the rest of printing the plan.
fn push_element(out: &mut String, e: &Element) {
    match e {
        Element::Port {
            proto,
            host_port,
            target,
            owner,
        } => {
            out.push_str(proto.as_str());
            out.push(' ');
            push_number(out, u32::from(*host_port));
            out.push_str(" -> ");
            out.push_str(&owner.instance);
            out.push(' ');
            push_socket_addr(out, target);
        }
        Element::Link {
            proto, dial, via, ..
        } => {
            out.push_str(proto.as_str());
            out.push(' ');
            push_socket_addr(out, dial);
            out.push_str(" -> ");
            push_socket_addr(out, via);
        }
    }
}

/// `a.b.c.d:port`, as `SocketAddrV4` displays it, without the formatting machinery (a plan or a
/// cache of 10,000 elements writes 50,000 numbers).
pub(crate) fn push_socket_addr(out: &mut String, addr: &SocketAddrV4) {
    for (i, octet) in addr.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_number(out, u32::from(octet));
    }
    out.push(':');
    push_number(out, u32::from(addr.port()));
}

/// `n` in decimal (see [`push_socket_addr`]).
pub(crate) fn push_number(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

pub fn plan_json(plan: &Plan) -> Value {
    let ns = |p: &NsPlan| {
        json!({
            "delete_table": p.table.delete_table,
            "create_table": p.table.create.is_some(),
            "remove": p.table.remove.iter().map(element_json).collect::<Vec<_>>(),
            "add": p.table.add.iter().map(element_json).collect::<Vec<_>>(),
            "sysctls": p.sysctls,
            "stale_flows": p.stale_flows.iter().map(element_json).collect::<Vec<_>>(),
        })
    };
    json!({
        "deployment": plan.deployment,
        "in_sync": plan.is_empty(),
        "create_bridge": plan.create_bridge,
        "wiring": plan.wiring,
        "containers": plan.containers,
        "host": ns(&plan.host),
        "instances": plan.instances.iter().map(|(id, p)| (id.clone(), ns(p))).collect::<serde_json::Map<_, _>>(),
    })
}

pub fn element_json(e: &Element) -> Value {
    match e {
        Element::Port {
            proto,
            host_port,
            target,
            owner,
        } => json!({
            "kind": "port", "proto": proto, "host_port": host_port,
            "target": target.to_string(), "deployment": &*owner.deployment, "instance": &*owner.instance,
        }),
        Element::Link {
            proto,
            dial,
            via,
            owner,
        } => json!({
            "kind": "link", "proto": proto, "dial": dial.to_string(), "via": via.to_string(),
            "deployment": &*owner.deployment, "instance": &*owner.instance,
        }),
    }
}

/// The resolved mappings as geard's deploy log printed them.
pub fn mapping_lines(resolved: &Resolved) -> String {
    let mut out = String::new();
    for inst in &resolved.instances {
        for m in &inst.mappings {
            let proto = if m.proto == crate::model::Proto::Tcp {
                String::new()
            } else {
                format!("/{}", m.proto)
            };
            let _ = writeln!(
                out,
                "{}: PortMapping: {}{proto} -> {}",
                inst.id, m.internal, m.host_port
            );
        }
    }
    for inst in &resolved.instances {
        for l in &inst.links {
            let _ = writeln!(
                out,
                "linking {}: {} -> {}:{} ({} {}:{})",
                inst.id,
                l.dial,
                resolved.gateway,
                l.host_port,
                l.target_instance,
                l.proto,
                l.target_port
            );
        }
    }
    out
}

/// Each instance's mappings drawn as a path, like the figure in geard's seed post:
/// `Client -> 6060 -> 80 rockmongo-1 27017 -> 4000 -> 27017 mongodb-1`. A hop whose element the
/// kernel does not hold is marked `(missing)`.
pub fn paths(resolved: &Resolved, installed: &std::collections::BTreeSet<Element>) -> Vec<String> {
    let held = |id: &str, proto, host_port| {
        installed.iter().any(|e| {
            matches!(e, Element::Port { proto: p, host_port: h, owner, .. }
                if *p == proto && *h == host_port && *owner.instance == *id
                    && *owner.deployment == *resolved.deployment)
        })
    };
    let mark = |ok: bool| if ok { "" } else { " (missing)" };
    let mut out = Vec::new();
    for inst in &resolved.instances {
        let links: String = inst
            .links
            .iter()
            .map(|l| {
                let ok = held(&l.target_instance, l.proto, l.host_port);
                format!(
                    " {} -> {} -> {} {}{}",
                    l.dial.port(),
                    l.host_port,
                    l.target_port,
                    l.target_instance,
                    mark(ok)
                )
            })
            .collect();
        for m in &inst.mappings {
            let ok = held(&inst.id, m.proto, m.host_port);
            let proto = if m.proto == crate::model::Proto::Tcp {
                String::new()
            } else {
                format!("{} ", m.proto)
            };
            out.push(format!(
                "Client -> {proto}{} -> {} {}{}{links}",
                m.host_port,
                m.internal,
                inst.id,
                mark(ok)
            ));
        }
        if inst.mappings.is_empty() && !links.is_empty() {
            out.push(format!("{}{links}", inst.id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;
    use crate::plan::ContainerSpec;
    use crate::ruleset::Owner;

    #[test]
    fn element_text_reads_as_format_would_write_it() {
        for (port, target) in [
            (0, "0.0.0.0:0"),
            (6060, "10.211.0.2:80"),
            (65535, "255.9.10.100:65535"),
        ] {
            let target: SocketAddrV4 = target.parse().unwrap();
            let e = Element::Port {
                proto: Proto::Udp,
                host_port: port,
                target,
                owner: Owner::new("d", "web-1"),
            };
            assert_eq!(element_text(&e), format!("udp {port} -> web-1 {target}"));
        }
        let (dial, via): (SocketAddrV4, SocketAddrV4) = (
            "127.0.0.1:27017".parse().unwrap(),
            "10.211.0.1:4000".parse().unwrap(),
        );
        let link = Element::Link {
            proto: Proto::Tcp,
            dial,
            via,
            owner: Owner::new("d", "web-1"),
        };
        assert_eq!(
            element_text(&link),
            "tcp 127.0.0.1:27017 -> 10.211.0.1:4000"
        );
    }

    #[test]
    fn container_actions_read_as_plan_lines() {
        let spec = ContainerSpec {
            image: "web:2".into(),
            env: vec![],
        };
        let mut plan = Plan {
            docker: true,
            ..Plan::default()
        };
        plan.containers.insert(
            "web-1".into(),
            ContainerAction::Recreate {
                spec: spec.clone(),
                reason: "image changed".into(),
            },
        );
        plan.containers
            .insert("web-2".into(), ContainerAction::Remove);
        plan.containers
            .insert("web-3".into(), ContainerAction::Create { spec });
        plan.wiring.insert(
            "web-1".into(),
            Wiring::Join {
                create_netns: true,
                address: "10.211.0.2".parse().unwrap(),
            },
        );
        plan.wiring
            .insert("web-2".into(), Wiring::Remove { delete_netns: true });
        assert_eq!(
            plan_lines(&plan, "gearnat0"),
            [
                "~ container web-1 (image changed) image web:2",
                "- container web-2",
                "+ container web-3 image web:2",
                "+ wiring of container web-1 10.211.0.2 on gearnat0",
            ]
        );
        assert_eq!(plan_json(&plan)["containers"]["web-2"]["action"], "remove");
    }
}
