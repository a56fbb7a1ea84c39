//! geard's output form of a deployment: the file as given plus `Instances`, each with its
//! resolved host ports and link targets. gearnat keeps one per applied deployment in its state
//! directory; it is itself a valid deployment file.

use serde_json::{json, Map, Value};

use crate::model::{Deployment, Proto};
use crate::resolve::Resolved;

pub fn output_file(d: &Deployment, resolved: &Resolved) -> Value {
    let containers: Vec<Value> = d
        .containers
        .iter()
        .map(|c| {
            let mut o = Map::new();
            o.insert("Name".into(), json!(c.name));
            if let Some(image) = &c.image {
                o.insert("Image".into(), json!(image));
            }
            o.insert("Count".into(), json!(c.count));
            let ports: Vec<Value> = c
                .public_ports
                .iter()
                .map(|p| {
                    let mut o = Map::new();
                    o.insert("Internal".into(), json!(p.internal));
                    if let Some(e) = p.external {
                        o.insert("External".into(), json!(e));
                    }
                    if p.proto != Proto::Tcp {
                        o.insert("Protocol".into(), json!(p.proto));
                    }
                    Value::Object(o)
                })
                .collect();
            if !ports.is_empty() {
                o.insert("PublicPorts".into(), Value::Array(ports));
            }
            let links: Vec<Value> = c
                .links
                .iter()
                .map(|l| {
                    let mut o = Map::new();
                    o.insert("To".into(), json!(l.to));
                    if l.non_local {
                        o.insert("NonLocal".into(), json!(true));
                    }
                    if l.match_port {
                        o.insert("MatchPort".into(), json!(true));
                    }
                    if !l.ports.is_empty() {
                        o.insert("Ports".into(), json!(l.ports));
                    }
                    if !l.alias_ports.is_empty() {
                        let alias: Vec<Value> = l
                            .alias_ports
                            .iter()
                            .map(|(i, e)| json!({"Internal": i, "External": e}))
                            .collect();
                        o.insert("AliasPorts".into(), Value::Array(alias));
                    }
                    Value::Object(o)
                })
                .collect();
            if !links.is_empty() {
                o.insert("Links".into(), Value::Array(links));
            }
            if !c.environment.is_empty() {
                let env: Vec<Value> = c
                    .environment
                    .iter()
                    .map(|e| json!({"Name": e.name, "Value": e.value}))
                    .collect();
                o.insert("Environment".into(), Value::Array(env));
            }
            Value::Object(o)
        })
        .collect();
    let mut top = Map::new();
    if !d.id_prefix.is_empty() {
        top.insert("IdPrefix".into(), json!(d.id_prefix));
    }
    top.insert("Containers".into(), Value::Array(containers));
    top.insert("Instances".into(), output_file_instances(resolved));
    Value::Object(top)
}

/// geard's `Instances`: each instance with its ports, host ports and link targets.
pub fn output_file_instances(resolved: &Resolved) -> Value {
    let instances: Vec<Value> = resolved
        .instances
        .iter()
        .map(|i| {
            let ports: Vec<Value> = i
                .mappings
                .iter()
                .map(|m| {
                    let mut o = Map::new();
                    o.insert("Internal".into(), json!(m.internal));
                    o.insert("External".into(), json!(m.host_port));
                    if m.proto != Proto::Tcp {
                        o.insert("Protocol".into(), json!(m.proto));
                    }
                    if let Some(t) = m.target {
                        o.insert(
                            "Target".into(),
                            json!({"Host": t.ip().to_string(), "Port": t.port()}),
                        );
                    }
                    Value::Object(o)
                })
                .collect();
            let mut o = Map::new();
            o.insert("Id".into(), json!(i.id));
            if let Some(image) = &i.image {
                o.insert("Image".into(), json!(image));
            }
            o.insert("From".into(), json!(i.container));
            o.insert("Ports".into(), Value::Array(ports));
            Value::Object(o)
        })
        .collect();
    Value::Array(instances)
}
