//! geard's output form of a deployment: the file as given plus `Instances`, each with its
//! resolved host ports and link targets. gearnat keeps one per applied deployment in its state
//! directory; it is itself a valid deployment file.
//!
//! Typed and borrowed rather than built as a `serde_json::Value`: at 10,000 public ports a tree
//! of maps took about 20 ms to build, write and free on every apply. Fields are declared in
//! sorted order, the order the file had when it was a JSON map, so files stay byte for byte the
//! same.

use serde::Serialize;
use serde_json::Value;

use crate::model::{Container, Deployment, Link, Proto, PublicPort};
use crate::resolve::{Instance, Mapping, Resolved};

/// A deployment in geard's output form, ready to serialize.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutputFile<'a> {
    containers: Vec<OutContainer<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    id_prefix: &'a str,
    instances: Vec<OutInstance<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutContainer<'a> {
    count: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    environment: Vec<NameValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<OutLink<'a>>,
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    public_ports: Vec<OutPublicPort>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NameValue<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutPublicPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    external: Option<u16>,
    internal: u16,
    #[serde(skip_serializing_if = "is_tcp")]
    protocol: Proto,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutLink<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    alias_ports: Vec<AliasPort>,
    #[serde(skip_serializing_if = "is_false")]
    match_port: bool,
    #[serde(skip_serializing_if = "is_false")]
    non_local: bool,
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    ports: &'a [u16],
    to: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AliasPort {
    external: u16,
    internal: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutInstance<'a> {
    from: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    ports: Vec<OutMapping>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct OutMapping {
    external: u16,
    internal: u16,
    #[serde(skip_serializing_if = "is_tcp")]
    protocol: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Target>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Target {
    host: String,
    port: u16,
}

fn is_tcp(proto: &Proto) -> bool {
    *proto == Proto::Tcp
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn output_file<'a>(d: &'a Deployment, resolved: &'a Resolved) -> OutputFile<'a> {
    OutputFile {
        containers: d.containers.iter().map(container).collect(),
        id_prefix: &d.id_prefix,
        instances: resolved.instances.iter().map(instance).collect(),
    }
}

fn container(c: &Container) -> OutContainer<'_> {
    OutContainer {
        count: c.count,
        environment: (c.environment.iter())
            .map(|e| NameValue {
                name: &e.name,
                value: &e.value,
            })
            .collect(),
        image: c.image.as_deref(),
        links: c.links.iter().map(link).collect(),
        name: &c.name,
        public_ports: c.public_ports.iter().map(public_port).collect(),
    }
}

fn public_port(p: &PublicPort) -> OutPublicPort {
    OutPublicPort {
        external: p.external,
        internal: p.internal,
        protocol: p.proto,
    }
}

fn link(l: &Link) -> OutLink<'_> {
    OutLink {
        alias_ports: (l.alias_ports.iter())
            .map(|(internal, external)| AliasPort {
                external: *external,
                internal: *internal,
            })
            .collect(),
        match_port: l.match_port,
        non_local: l.non_local,
        ports: &l.ports,
        to: &l.to,
    }
}

fn instance(i: &Instance) -> OutInstance<'_> {
    OutInstance {
        from: &i.container,
        id: &i.id,
        image: i.image.as_deref(),
        ports: i.mappings.iter().map(mapping).collect(),
    }
}

fn mapping(m: &Mapping) -> OutMapping {
    OutMapping {
        external: m.host_port,
        internal: m.internal,
        protocol: m.proto,
        target: m.target.map(|t| Target {
            host: t.ip().to_string(),
            port: t.port(),
        }),
    }
}

/// geard's `Instances`: each instance with its ports, host ports and link targets.
pub fn output_file_instances(resolved: &Resolved) -> Value {
    let instances: Vec<OutInstance> = resolved.instances.iter().map(instance).collect();
    serde_json::to_value(instances).unwrap_or(Value::Null)
}
