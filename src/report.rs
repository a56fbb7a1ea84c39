//! What gearnat prints: plans as lines a person reads, or JSON for scripts, and the resolved
//! mappings the way geard's deploy log showed them.

use std::fmt::Write;

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
    out.extend(
        p.table
            .remove
            .iter()
            .map(|e| format!("- {ns} {}", element_text(e))),
    );
    out.extend(
        p.table
            .add
            .iter()
            .map(|e| format!("+ {ns} {}", element_text(e))),
    );
    out.extend(
        p.stale_flows
            .iter()
            .map(|e| format!("- {ns} conntrack {}", element_text(e))),
    );
    for s in &p.sysctls {
        let from = s.from.as_deref().map_or("unset", str::trim);
        out.push(format!("~ {ns} sysctl {} {from} -> {}", s.key, s.to));
    }
}

/// `tcp 6060 -> rockmongo-1 10.211.0.2:80` or `tcp 127.0.0.1:27017 -> 10.211.0.1:4000`.
pub fn element_text(e: &Element) -> String {
    match e {
        Element::Port {
            proto,
            host_port,
            target,
            owner,
        } => {
            format!("{proto} {host_port} -> {} {target}", owner.instance)
        }
        Element::Link {
            proto, dial, via, ..
        } => format!("{proto} {dial} -> {via}"),
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
    use crate::plan::ContainerSpec;

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
