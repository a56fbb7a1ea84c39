use std::path::{Path, PathBuf};

use super::*;
use crate::model::{Container, EnvVar, InstanceNumber, Link, PinnedPort, Proto, PublicPort};

fn bad_fixture(name: &str) -> PathBuf {
    fixture("bad").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/deployments")
        .join(name)
}

/// The message lines for `src`, which must be refused.
fn errors(src: &str) -> Vec<String> {
    match parse(src, "seed.json", "seed") {
        Ok(d) => panic!("accepted: {d:?}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// The single message line for `src`.
fn error(src: &str) -> String {
    let lines = errors(src);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    lines.into_iter().next().unwrap()
}

fn ok(src: &str) -> Deployment {
    parse(src, "seed.json", "seed").unwrap_or_else(|e| panic!("{e}"))
}

/// A deployment of the given containers (JSON objects, comma-separated, one per line from
/// line 2 on).
fn with(containers: &str) -> String {
    format!("{{\"Containers\": [\n{containers}\n]}}")
}

fn public(internal: u16, external: Option<u16>) -> PublicPort {
    PublicPort {
        internal,
        external,
        proto: Proto::Tcp,
    }
}

#[test]
fn seed_parses_to_the_expected_model() {
    let d = load(&fixture("rockmongo_mongodb.json"), None).unwrap();
    let expected = Deployment {
        name: "rockmongo_mongodb".into(),
        id_prefix: String::new(),
        containers: vec![
            Container {
                name: "rockmongo".into(),
                image: Some("derekwaynecarr/rockmongo".into()),
                count: 1,
                public_ports: vec![public(80, Some(6060))],
                links: vec![Link {
                    to: "mongodb".into(),
                    ports: vec![],
                    alias_ports: vec![],
                    match_port: false,
                    non_local: false,
                }],
                environment: vec![],
            },
            Container {
                name: "mongodb".into(),
                image: Some("ccoleman/ubuntu-mongodb".into()),
                count: 1,
                public_ports: vec![public(27017, None)],
                links: vec![],
                environment: vec![],
            },
        ],
        pinned: vec![],
    };
    assert_eq!(d, expected);
    assert_eq!(d.instance_ids(), ["rockmongo-1", "mongodb-1"]);
}

#[test]
fn keys_match_regardless_of_case() {
    let camel = ok(&with(
        r#"{"Name": "web", "Count": 2, "Image": "x", "PublicPorts": [{"Internal": 80}],
            "Environment": [{"Name": "A", "Value": "b"}], "Affinity": "distribute"}"#,
    ));
    let mixed = ok(r#"{"CONTAINERS": [{"nAmE": "web", "count": 2, "IMAGE": "x",
            "publicPorts": [{"INTERNAL": 80}], "environment": [{"name": "A", "VALUE": "b"}],
            "affinity": "distribute"}]}"#);
    assert_eq!(camel, mixed);
    assert_eq!(
        camel.containers[0].environment,
        [EnvVar {
            name: "A".into(),
            value: "b".into()
        }]
    );
    assert_eq!(camel.containers[0].count, 2);
}

#[test]
fn null_is_the_same_as_absent() {
    let d = ok(&with(
        r#"{"Name": "web", "Count": null, "Image": null, "PublicPorts": null, "Links": null}"#,
    ));
    assert_eq!(d.containers[0].count, 0);
    assert_eq!(d.containers[0].image, None);
}

#[test]
fn absent_count_is_zero_and_external_zero_lets_the_host_pick() {
    let d = ok(&with(
        r#"{"Name": "web", "PublicPorts": [{"Internal": 80, "External": 0}]}"#,
    ));
    assert_eq!(d.containers[0].count, 0);
    assert_eq!(d.containers[0].public_ports, [public(80, None)]);
}

#[test]
fn protocol_extension() {
    let d = ok(&with(
        r#"{"Name": "dns", "Count": 1, "PublicPorts": [{"Internal": 53, "Protocol": "UDP"},
            {"Internal": 53, "Protocol": "tcp", "External": 53},
            {"Internal": 54, "External": 53, "Protocol": "udp"}]}"#,
    ));
    let ports = &d.containers[0].public_ports;
    assert_eq!(
        ports[0],
        PublicPort {
            internal: 53,
            external: None,
            proto: Proto::Udp
        }
    );
    assert_eq!(
        ports[1],
        PublicPort {
            internal: 53,
            external: Some(53),
            proto: Proto::Tcp
        }
    );
    assert_eq!(ports[2].proto, Proto::Udp);
    assert_eq!(
        error(&with(
            r#"{"Name": "dns", "Count": 1, "PublicPorts": [{"Internal": 53, "Protocol": "sctp"}]}"#
        )),
        "seed.json:2:74: unknown Protocol \"sctp\"; use \"tcp\" or \"udp\""
    );
}

#[test]
fn geard_output_file_pins_host_ports() {
    let path = fixture("rockmongo_mongodb.json.20140422-072112");
    let d = load(&path, None).unwrap();
    assert_eq!(d.name, "rockmongo_mongodb");
    // rockmongo's 6060 is explicit in the file, so only mongodb's host-picked port is pinned.
    assert_eq!(
        d.pinned,
        [PinnedPort {
            instance: InstanceNumber { container: 1, n: 1 },
            internal: 27017,
            proto: Proto::Tcp,
            external: 4000,
        }]
    );
}

#[test]
fn instances_naming_no_current_instance_are_ignored() {
    let src = r#"{
  "IdPrefix": "app.",
  "Containers": [{"Name": "db", "Count": 2, "PublicPorts": [{"Internal": 27017}]}],
  "Instances": [
    {"Id": "app.db-2", "On": {"Host": "localhost", "Port": 43273},
     "Ports": [{"Internal": 27017, "External": 4001, "Target": {"Host": "192.168.1.1"}},
               {"Internal": 28017, "External": 4002}]},
    {"Id": "app.db-3", "Ports": [{"Internal": 27017, "External": 4003}]},
    {"Id": "app.db-02", "Ports": [{"Internal": 27017, "External": 4004}]},
    {"Id": "db-1", "Ports": [{"Internal": 27017, "External": 4005}]},
    {"Id": "app.web-1", "Ports": [{"Internal": 27017, "External": 4006}]},
    {"Id": "app.db-1", "Environment": [{"Name": "A"}], "Ports": [{"Internal": 27017}]}
  ]
}"#;
    let d = ok(src);
    assert_eq!(
        d.pinned,
        [PinnedPort {
            instance: InstanceNumber { container: 0, n: 2 },
            internal: 27017,
            proto: Proto::Tcp,
            external: 4001,
        }]
    );
}

#[test]
fn pinned_ports_clash_with_explicit_externals_and_each_other() {
    let src = r#"{
  "Containers": [{"Name": "db", "Count": 2, "PublicPorts": [{"Internal": 27017}]},
                 {"Name": "web", "Count": 1, "PublicPorts": [{"Internal": 80, "External": 4000}]}],
  "Instances": [
    {"Id": "db-1", "Ports": [{"Internal": 27017, "External": 4000}]},
    {"Id": "db-2", "Ports": [{"Internal": 27017, "External": 4001}, {"Internal": 27017}]},
    {"Id": "db-2", "Ports": [{"Internal": 27017, "External": 4001}]},
    {"Id": "web-1", "Ports": [{"Internal": 80, "External": 70000}]}
  ]
}"#;
    assert_eq!(
        errors(src),
        [
            "seed.json:5:62: host port 4000/tcp is already claimed by container \"web\" (line 3); \
             choose another External, or leave it out to let the host pick",
            "seed.json:7:12: instance \"db-2\" is listed twice in Instances (first at line 6); \
             remove one of them",
            "seed.json:8:60: port 70000 is out of range; use 1..65535, or 0 to let the host pick",
        ]
    );
}

#[test]
fn randomize_ids_is_refused() {
    assert_eq!(
        error("{\"RandomizeIds\": true}"),
        "seed.json:1:18: RandomizeIds is not supported: gearnat keeps instance ids stable; \
         remove it"
    );
    ok("{\"RandomizeIds\": false, \"IdPrefix\": \"\"}");
}

#[test]
fn container_names() {
    assert_eq!(
        error(&with(r#"{"Name": "web", "Count": 1}, {"Name": "web"}"#)),
        "seed.json:2:39: a second container named \"web\" (the first is at line 2); rename one \
         of them"
    );
    assert_eq!(
        error(&with(r#"{"Count": 1}"#)),
        "seed.json:2:1: a container without a Name; add one, such as \"Name\": \"web\""
    );
    assert_eq!(
        error(&with(r#"{"Name": ""}"#)),
        "seed.json:2:10: the container's Name is empty; give it a name, such as \"web\""
    );
    assert_eq!(
        error(&with(r#"{"Name": "a/b", "Count": 1}"#)),
        "seed.json:2:10: container name \"a/b\" contains \"/\" (it would name a path); instance \
         ids (IdPrefix + Name + \"-\" + N) must match geard's rule [a-zA-Z0-9_\\-.]{4,24}: use \
         letters, digits, \"_\", \"-\" and \".\""
    );
    assert!(error(&with(r#"{"Name": "my db"}"#))
        .starts_with("seed.json:2:10: container name \"my db\" contains \" \"; instance ids"));
}

#[test]
fn instance_ids_follow_geards_rule() {
    assert_eq!(
        error(&with(r#"{"Name": "a", "Count": 1}"#)),
        "seed.json:2:10: instance id \"a-1\" has 3 characters, fewer than 4 (geard's rule \
         [a-zA-Z0-9_\\-.]{4,24}); use a longer Name"
    );
    ok(&with(r#"{"Name": "ab", "Count": 1}"#));
    // 22 + "-" + 1 digit = 24 is fine; 10 instances make the last id 25 characters long.
    ok(&with(r#"{"Name": "abcdefghijklmnopqrstuv", "Count": 9}"#));
    assert_eq!(
        error(&with(r#"{"Name": "abcdefghijklmnopqrstuv", "Count": 10}"#)),
        "seed.json:2:10: instance id \"abcdefghijklmnopqrstuv-10\" has 25 characters, more than \
         24 (geard's rule [a-zA-Z0-9_\\-.]{4,24}); shorten the Name by 1"
    );
    let src = "{\"IdPrefix\": \"my app/\",\n\"Containers\": [{\"Name\": \"web\"}]}";
    assert_eq!(
        error(src),
        "seed.json:1:14: IdPrefix \"my app/\" contains \" \", which geard's instance ids may not \
         contain ([a-zA-Z0-9_\\-.]{4,24}); use letters, digits, \"_\", \"-\" and \".\""
    );
    let d = ok("{\"IdPrefix\": \"x.\", \"Containers\": [{\"Name\": \"db\", \"Count\": 2}]}");
    assert_eq!(d.instance_ids(), ["x.db-1", "x.db-2"]);
}

#[test]
fn ports_must_be_in_range() {
    let port = |p: &str| {
        error(&with(&format!(
            r#"{{"Name": "web", "PublicPorts": [{{"Internal": {p}}}]}}"#
        )))
    };
    assert_eq!(
        port("0"),
        "seed.json:2:46: port 0 is out of range; use 1..65535"
    );
    assert_eq!(
        port("65536"),
        "seed.json:2:46: port 65536 is out of range; use 1..65535"
    );
    assert_eq!(
        port("-1"),
        "seed.json:2:46: port -1 is out of range; use 1..65535"
    );
    assert_eq!(
        port("80.5"),
        "seed.json:2:46: expected a whole number for Internal, found 80.5; remove the fraction"
    );
    assert_eq!(
        port("8e1"),
        "seed.json:2:46: expected a whole number for Internal, found 8e1; remove the fraction"
    );
    assert_eq!(
        port("\"80\""),
        "seed.json:2:46: expected a whole number for Internal, found a string"
    );
    assert_eq!(
        port("99999999999999999999"),
        "seed.json:2:46: Internal 99999999999999999999 is far out of range"
    );
    ok(&with(
        r#"{"Name": "web", "PublicPorts": [{"Internal": 65535, "External": 1}]}"#,
    ));
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "PublicPorts": [{"Internal": 1, "External": 65536}]}"#
        )),
        "seed.json:2:61: port 65536 is out of range; use 1..65535, or leave External out to let \
         the host pick"
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "PublicPorts": [{"External": 80}]}"#
        )),
        "seed.json:2:33: a public port without Internal; add the port the instance listens on, \
         such as \"Internal\": 8080"
    );
}

#[test]
fn public_port_clashes() {
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "PublicPorts": [{"Internal": 80},
{"Internal": 80, "External": 8080}]}"#
        )),
        "seed.json:3:14: Internal 80/tcp is published twice in this container (also at line 2); \
         remove one of them"
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "Count": 1, "PublicPorts": [{"Internal": 80, "External": 8080}]},
{"Name": "api", "Count": 1, "PublicPorts": [{"Internal": 81, "External": 8080}]}"#
        )),
        "seed.json:3:74: host port 8080/tcp is already claimed by container \"web\" (line 2); \
         choose another External, or leave it out to let the host pick"
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "Count": 1, "PublicPorts": [{"Internal": 80, "External": 8080},
{"Internal": 81, "External": 8080}]}"#
        )),
        "seed.json:3:30: host port 8080/tcp is already claimed by container \"web\" (line 2); \
         choose another External, or leave it out to let the host pick"
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "web", "Count": 2, "PublicPorts": [{"Internal": 80, "External": 8080}]}"#
        )),
        "seed.json:2:74: External 8080 would be the host port of all 2 instances of \"web\", but \
         a host port reaches one instance; leave External out (the host picks one per instance) \
         or set Count to 1"
    );
    // The same port on the other protocol is another host port.
    ok(&with(
        r#"{"Name": "web", "Count": 1, "PublicPorts": [{"Internal": 80, "External": 8080},
{"Internal": 80, "External": 8080, "Protocol": "udp"}]}"#,
    ));
}

#[test]
fn counts() {
    assert_eq!(
        error(&with(r#"{"Name": "web", "Count": -1}"#)),
        "seed.json:2:26: Count -1 is negative; use 0 or more"
    );
    assert_eq!(
        error(&with(r#"{"Name": "web", "Count": 1.0}"#)),
        "seed.json:2:26: expected a whole number for Count, found 1.0; remove the fraction"
    );
    assert_eq!(
        error(&with(r#"{"Name": "web", "Count": true}"#)),
        "seed.json:2:26: expected a whole number for Count, found a boolean"
    );
}

const DB: &str =
    r#"{"Name": "db", "Count": 2, "PublicPorts": [{"Internal": 27017}, {"Internal": 28017}]}"#;

fn linked(link: &str) -> String {
    with(&format!(
        "{DB},\n{{\"Name\": \"web\", \"Count\": 1, \"Links\": [{link}]}}"
    ))
}

#[test]
fn links() {
    let d = ok(&linked(
        r#"{"To": "db", "NonLocal": true, "MatchPort": true}"#,
    ));
    assert_eq!(
        d.containers[1].links,
        [Link {
            to: "db".into(),
            ports: vec![],
            alias_ports: vec![],
            match_port: true,
            non_local: true
        }]
    );
    // A port named only in AliasPorts is linked too; an alias External of 0 is no alias.
    let d = ok(&linked(
        r#"{"To": "db", "Ports": [28017], "AliasPorts": [{"Internal": 27017, "External": 7017},
            {"Internal": 28017, "External": 0}]}"#,
    ));
    assert_eq!(d.containers[1].links[0].ports, [28017, 27017]);
    assert_eq!(d.containers[1].links[0].alias_ports, [(27017, 7017)]);
}

#[test]
fn link_errors() {
    assert_eq!(
        error(&linked(r#"{"To": "bd"}"#)),
        "seed.json:3:46: link to unknown container \"bd\"; did you mean \"db\"?"
    );
    assert_eq!(
        error(&linked(r#"{"To": "cache"}"#)),
        "seed.json:3:46: link to unknown container \"cache\"; use the Name of one of the \
         containers (\"db\", \"web\")"
    );
    assert_eq!(
        error(&linked(r#"{"NonLocal": true}"#)),
        "seed.json:3:39: a link without To; add the name of the container to link to, such as \
         \"To\": \"db\""
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "db", "PublicPorts": [{"Internal": 27017}]},
{"Name": "web", "Count": 1, "Links": [{"To": "db"}]}"#
        )),
        "seed.json:3:46: link to \"db\", which has Count 0: nothing to link to; raise its count \
         or remove the link"
    );
    assert_eq!(
        error(&with(
            r#"{"Name": "db", "Count": 1},
{"Name": "web", "Count": 1, "Links": [{"To": "db"}]}"#
        )),
        "seed.json:3:46: link to \"db\", which has no public ports; add PublicPorts to \"db\" or \
         remove the link"
    );
    assert_eq!(
        error(&linked(r#"{"To": "db", "Ports": [27018]}"#)),
        "seed.json:3:62: port 27018 in Ports is not a public port of \"db\" (it publishes 27017, \
         28017); use one of those, or add 27018 to its PublicPorts"
    );
    assert_eq!(
        error(&linked(r#"{"To": "db", "Ports": [0]}"#)),
        "seed.json:3:62: port 0 is out of range; use 1..65535"
    );
    assert_eq!(
        error(&linked(r#"{"To": "db", "Ports": [27017, 27017]}"#)),
        "seed.json:3:69: port 27017 is listed twice; remove one"
    );
    assert_eq!(
        error(&linked(
            r#"{"To": "db", "AliasPorts": [{"Internal": 80, "External": 8080}]}"#
        )),
        "seed.json:3:80: port 80 in AliasPorts is not a public port of \"db\" (it publishes \
         27017, 28017); use one of those, or add 80 to its PublicPorts"
    );
    assert_eq!(
        error(&linked(
            r#"{"To": "db", "AliasPorts": [{"Internal": 27017, "External": 70000}]}"#
        )),
        "seed.json:3:99: port 70000 is out of range; use 1..65535, or leave External out to \
         dial the target's own port"
    );
    assert_eq!(
        error(&linked(r#"{"To": "db"}, {"To": "db", "Ports": [27017]}"#)),
        "seed.json:3:60: a second link to \"db\" in this container (the first is at line 3); \
         merge them into one link"
    );
    assert_eq!(
        error(&linked(r#"{"To": "db", "NonLocal": "yes"}"#)),
        "seed.json:3:64: expected true or false for NonLocal, found a string"
    );
}

#[test]
fn environment_limits() {
    let env = |name: &str, value: &str| {
        with(&format!(
            r#"{{"Name": "web", "Environment": [{{"Name": "{name}", "Value": "{value}"}}]}}"#
        ))
    };
    ok(&env(&"N".repeat(1024), &"v".repeat(8192)));
    assert_eq!(
        error(&env(&"N".repeat(1025), "v")),
        "seed.json:2:42: an environment variable Name of 1025 bytes, more than geard's limit \
         of 1024; shorten it"
    );
    assert_eq!(
        error(&env("A", &"v".repeat(8193))),
        "seed.json:2:56: the value of A has 8193 bytes, more than geard's limit of 8192 (8 KiB); \
         shorten it"
    );
    assert_eq!(
        error(&env(" ", "v")),
        "seed.json:2:42: the environment variable's Name is empty; give it one"
    );
    assert_eq!(
        error(&with(r#"{"Name": "web", "Environment": [{"Value": "v"}]}"#)),
        "seed.json:2:33: an environment variable without a Name; add one"
    );
}

#[test]
fn unknown_keys_and_wrong_types() {
    assert_eq!(
        error(&with(r#"{"name": "web", "publicport": []}"#)),
        "seed.json:2:17: unknown key \"publicport\" in a container; did you mean \"publicports\"?"
    );
    assert_eq!(
        error(&with(r#"{"Name": "web", "Conut": 1}"#)),
        "seed.json:2:17: unknown key \"Conut\" in a container; did you mean \"Count\"?"
    );
    assert_eq!(
        error("{\"Containers\": [], \"Volumes\": []}"),
        "seed.json:1:20: unknown key \"Volumes\" at the top level; remove it (the keys here are \
         Containers, Instances, IdPrefix, RandomizeIds)"
    );
    assert_eq!(
        error("{\"Containers\": {}}"),
        "seed.json:1:16: expected an array for Containers, found an object"
    );
    assert_eq!(
        error("{\"Containers\": [\"web\"]}"),
        "seed.json:1:17: expected an object for a container, found a string"
    );
    assert_eq!(
        error("[]"),
        "seed.json:1:1: expected an object for a deployment file, found an array"
    );
    assert_eq!(
        error(
            "{\"Instances\": [{\"Id\": \"db-1\", \"Ports\": [{\"Internal\": 1, \"Targte\": {}}]}]}"
        ),
        "seed.json:1:57: unknown key \"Targte\" in an instance port; did you mean \"Target\"?"
    );
}

#[test]
fn every_problem_is_reported_in_order_up_to_the_cap() {
    let lines = errors(&with(
        r#"{"Name": "web", "Count": -1, "Bogus": 1},
{"Name": "x", "PublicPorts": [{"Internal": 0}]}"#,
    ));
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("seed.json:2:26: Count -1"));
    assert!(lines[1].starts_with("seed.json:2:30: unknown key \"Bogus\""));
    assert!(lines[2].starts_with("seed.json:3:10: instance id \"x-1\""));
    assert!(lines[3].starts_with("seed.json:3:44: port 0 is out of range"));

    let many: Vec<String> = (0..30)
        .map(|i| format!("{{\"Name\": \"web{i}\", \"Count\": -1}}"))
        .collect();
    let lines = errors(&with(&many.join(",\n")));
    assert_eq!(lines.len(), MAX_PROBLEMS_SHOWN + 1);
    assert_eq!(
        lines[19],
        "seed.json:21:28: Count -1 is negative; use 0 or more"
    );
    assert_eq!(
        lines[20],
        "seed.json: 10 more problems not shown; fix the ones above first"
    );
}

#[test]
fn size_limits() {
    let containers: Vec<String> = (0..=MAX_CONTAINERS)
        .map(|i| format!("{{\"Name\": \"c{i:04}\"}}"))
        .collect();
    assert_eq!(
        error(&with(&containers.join(","))),
        "seed.json:1:16: Containers has 1001 entries, more than gearnat's limit of 1000; split \
         the deployment into several files"
    );
    let ports: Vec<String> = (1..=MAX_PUBLIC_PORTS + 1)
        .map(|i| format!("{{\"Internal\": {i}}}"))
        .collect();
    assert_eq!(
        error(&with(&format!(
            "{{\"Name\": \"web\", \"PublicPorts\": [{}]}}",
            ports.join(",")
        ))),
        "seed.json:2:32: PublicPorts has 10001 entries, more than gearnat's limit of 10000; \
         split the container into several"
    );
    assert_eq!(
        error(&with(r#"{"Name": "web", "Count": 10001}"#)),
        "seed.json:2:26: Count 10001 is more than gearnat's limit of 10000 instances per \
         container; lower it"
    );
    let ports: Vec<String> = (1..=6).map(|i| format!("{{\"Internal\": {i}}}")).collect();
    let big = format!(
        r#"{{"Name": "web", "Count": 10000, "PublicPorts": [{}]}}"#,
        ports.join(",")
    );
    assert_eq!(
        error(&with(&big)),
        "seed.json:2:1: with this container the deployment has 60000 mappings (instances x \
         public ports), more than gearnat's limit of 50000; lower Count or split the deployment \
         into several files"
    );
    let src = with(
        r#"{"Name": "db", "Count": 400, "PublicPorts": [{"Internal": 1}]},
{"Name": "web", "Count": 400, "Links": [{"To": "db"}]}"#,
    );
    assert_eq!(
        error(&src),
        "seed.json:3:41: with this link the deployment has 160000 link entries (source \
         instances x target instances x linked ports), more than gearnat's limit of 100000; \
         lower a Count or link fewer ports"
    );
    let huge = " ".repeat(MAX_FILE_BYTES as usize + 1);
    assert_eq!(
        parse(&huge, "seed.json", "seed").unwrap_err().to_string(),
        "seed.json: the file has 4194305 bytes, more than the 4194304 a deployment file may \
         have; is this the right file?"
    );
}

#[test]
fn syntax_errors_name_the_file() {
    assert_eq!(
        error("{\"Containers\": [\n"),
        "seed.json:2:1: the file ends where a value was expected; the file may be cut short"
    );
    assert_eq!(
        error("{}\n{}"),
        "seed.json:2:1: unexpected `{` after the end of the JSON document; remove everything \
         after the closing bracket"
    );
    assert!(error("{\"IdPrefix\": \"a\\qb\"}").starts_with("seed.json:1:16: invalid escape"));
    let deep = format!("{{\"Containers\": {}", "[".repeat(200));
    assert!(error(&deep).starts_with("seed.json:1:79: arrays and objects are nested more than"));
    let long = format!("{{\"IdPrefix\": \"{}\"}}", "a".repeat(MAX_STRING_BYTES + 1));
    assert!(error(&long).starts_with("seed.json:1:14: a string longer than 65536 bytes"));
    assert_eq!(
        errors("{\"Containers\": [], \"containers\": [], \"IDPREFIX\": \"\", \"idprefix\": 1}"),
        [
            "seed.json:1:20: duplicate key \"containers\" (keys match regardless of case; the \
             first is at line 1, column 2); remove one of them",
            "seed.json:1:54: duplicate key \"idprefix\" (keys match regardless of case; the \
             first is at line 1, column 38); remove one of them",
        ]
    );
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let shown = missing.display().to_string();
    assert_eq!(
        load(&missing, None).unwrap_err().to_string(),
        format!("{shown}: no such file; check the path")
    );
    let sub = dir.path().join("dir.json");
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(
        load(&sub, None).unwrap_err().to_string(),
        format!(
            "{}: this is a directory, not a deployment file; give the path of a JSON file",
            sub.display()
        )
    );
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    assert!(load(&big, None).unwrap_err().to_string().ends_with(
        "big.json: the file has 4194305 bytes, more than the 4194304 a deployment file may have; \
         is this the right file?"
    ));
    let bad_name = dir.path().join("my deployment.json");
    std::fs::write(&bad_name, "{}").unwrap();
    assert_eq!(
        load(&bad_name, None).unwrap_err().to_string(),
        format!(
            "{}: the deployment name \"my deployment\" contains \" \"; use letters, digits, \
             \"_\", \".\" and \"-\", 1 to 64 of them; rename the file or give --name",
            bad_name.display()
        )
    );
    assert_eq!(load(&bad_name, Some("mine")).unwrap().name, "mine");
    assert!(load(&bad_name, Some("a/b"))
        .unwrap_err()
        .to_string()
        .ends_with("contains \"/\"; use letters, digits, \"_\", \".\" and \"-\", 1 to 64 of them; give another --name"));
}

#[test]
fn not_utf8_gives_the_position() {
    let path = bad_fixture("not_utf8.json");
    assert_eq!(
        load(&path, None).unwrap_err().to_string(),
        format!(
            "{}:3:17: the file is not valid UTF-8 (byte 0xe9); save it as UTF-8",
            path.display()
        )
    );
}

#[test]
fn names_from_paths() {
    let name = |p: &str| name_from_path(Path::new(p));
    assert_eq!(
        name("rockmongo_mongodb.json.20140422-072112"),
        "rockmongo_mongodb"
    );
    assert_eq!(
        name("/srv/deploy/rockmongo_mongodb.json"),
        "rockmongo_mongodb"
    );
    assert_eq!(name("seed.json"), "seed");
    assert_eq!(name("seed"), "seed");
    assert_eq!(name("a.b.json"), "a.b");
    assert_eq!(name("seed.20140422-072112"), "seed");
    assert_eq!(name("seed.json.2014042-072112"), "seed.json");
    assert_eq!(name(".hidden"), ".hidden");
    assert_eq!(name("dir/"), "dir");
}

#[test]
fn deployment_names() {
    for good in ["seed", "rockmongo_mongodb", "a.b-c_D9", &"x".repeat(64)] {
        assert_eq!(check_deployment_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a b",
        "a/b",
        "é",
        &"x".repeat(65),
        "a:b",
        "a.state",
    ] {
        assert!(check_deployment_name(bad).is_err(), "{bad}");
    }
}

/// Each bad fixture is refused with one message naming the file and the position; the end-to-end
/// tests rely on these.
#[test]
fn bad_fixtures() {
    // A position where the problem is in the file's text; none where it is the path itself.
    let cases = [
        (
            "clashes.state.json",
            " the deployment name \"clashes.state\" ends in \".state\"",
        ),
        (
            "comment.json",
            "2:3: comments are not allowed in JSON; remove the comment",
        ),
        (
            "container_is_a_string.json",
            "2:17: expected an object for a container, found a string",
        ),
        (
            "containers_is_an_object.json",
            "2:16: expected an array for Containers, found an object",
        ),
        (
            "control_character_in_string.json",
            "3:39: control character U+0009 inside a string; write it as \\u0009",
        ),
        (
            "count_huge.json",
            "3:27: Count 1000000 is more than gearnat's limit of 10000 instances pe",
        ),
        (
            "count_is_a_string.json",
            "3:27: expected a whole number for Count, found a string",
        ),
        (
            "count_leading_zero.json",
            "3:27: invalid number `01`; write numbers like 80, -1 or 1.5 (no leadin",
        ),
        (
            "count_nan.json",
            "3:27: unexpected word `NaN`; strings must be in double quotes; JSON's ",
        ),
        (
            "count_overflows.json",
            "3:27: Count 99999999999999999999999999 is far out of range",
        ),
        (
            "count_with_fraction.json",
            "3:27: expected a whole number for Count, found 1.5; remove the fractio",
        ),
        (
            "dangling_symlink.json",
            " a symbolic link to does-not-exist.json, which does not exist; check t",
        ),
        (
            "deep_nesting.json",
            "1:78: arrays and objects are nested more than 64 deep; a deployment fi",
        ),
        (
            "duplicate_container_name.json",
            "4:13: a second container named \"web\" (the first is at line 3); rename ",
        ),
        (
            "duplicate_key.json",
            "3:19: duplicate key \"Name\" (keys match regardless of case; the first i",
        ),
        (
            "duplicate_key_other_case.json",
            "3:3: duplicate key \"containers\" (keys match regardless of case; the fi",
        ),
        (
            "empty.json",
            "1:1: the file is empty; a deployment file is a JSON object such as {\"C",
        ),
        (
            "environment_value_too_long.json",
            "4:43: the value of KEY has 9000 bytes, more than geard's limit of 8192",
        ),
        (
            "external_for_many_instances.json",
            "3:70: External 8080 would be the host port of all 2 instances of \"web\"",
        ),
        (
            "host_port_claimed_twice.json",
            "4:72: host port 8080/tcp is already claimed by container \"web\" (line 3",
        ),
        (
            "id_prefix_with_path.json",
            "2:15: IdPrefix \"../../etc/\" contains \"/\", which geard's instance ids m",
        ),
        (
            "instance_id_too_long.json",
            "4:13: instance id \"production-customer-database-1\" has 30 characters, ",
        ),
        (
            "instances_port_out_of_range.json",
            "4:56: port 70000 is out of range; use 1..65535, or 0 to let the host p",
        ),
        (
            "is_a_directory.json",
            " this is a directory, not a deployment file; give the path of a JSON f",
        ),
        (
            "link_port_zero.json",
            "3:58: port 0 is out of range; use 1..65535",
        ),
        (
            "link_to_count_zero.json",
            "3:44: link to \"db\", which has Count 0: nothing to link to; raise its c",
        ),
        (
            "link_to_unknown_container.json",
            "3:44: link to unknown container \"mongo\"; did you mean \"mongodb\"?",
        ),
        (
            "link_to_unpublished_port.json",
            "3:58: port 27018 in Ports is not a public port of \"db\" (it publishes 2",
        ),
        (
            "lone_surrogate.json",
            "3:17: a \\u escape encodes half of a UTF-16 surrogate pair without the ",
        ),
        (
            "long_names_in_link.json",
            "4:44: link to unknown container \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ),
        (
            "long_number.json",
            "3:27: Count 9999999999999999999999999999999999999999... (100000 charac",
        ),
        (
            "long_unknown_key.json",
            "3:19: unknown key \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\" (60000",
        ),
        (
            "megabyte_string.json",
            "3:37: a string longer than 65536 bytes; no value in a deployment file ",
        ),
        (
            "name with space.json",
            " the deployment name \"name with space\" contains \" \"; use letters, digi",
        ),
        (
            "name_is_a_number.json",
            "3:13: expected a string for Name, found a number",
        ),
        (
            "name_with_command_substitution.json",
            "3:13: container name \"$(reboot)\" contains \"$\"; instance ids (IdPrefix ",
        ),
        (
            "name_with_dot_dot_slash.json",
            "3:13: container name \"../x\" contains \"/\" (it would name a path); insta",
        ),
        (
            "name_with_nul_escape.json",
            "3:13: container name \"web\\0\" contains \"\\0\"; instance ids (IdPrefix + N",
        ),
        (
            "name_with_quote.json",
            "3:13: container name \"web\\\"x\" contains \"\\\"\"; instance ids (IdPrefix + ",
        ),
        (
            "name_with_semicolon.json",
            "3:13: container name \"a;rm -rf /\" contains \";\"; instance ids (IdPrefix",
        ),
        (
            "name_with_space.json",
            "3:13: container name \"my web\" contains \" \"; instance ids (IdPrefix + N",
        ),
        (
            "negative_count.json",
            "3:27: Count -1 is negative; use 0 or more",
        ),
        (
            "not_utf8.json",
            "3:17: the file is not valid UTF-8 (byte 0xe9); save it as UTF-8",
        ),
        (
            "port_65536.json",
            "3:70: port 65536 is out of range; use 1..65535, or leave External out ",
        ),
        (
            "port_out_of_range.json",
            "6:48: port 70000 is out of range; use 1..65535, or leave External out ",
        ),
        (
            "port_zero.json",
            "3:56: port 0 is out of range; use 1..65535",
        ),
        (
            "randomize_ids.json",
            "2:19: RandomizeIds is not supported: gearnat keeps instance ids stable",
        ),
        (
            "single_quotes.json",
            "2:3: expected a key in double quotes, found `'`",
        ),
        (
            "symlink_loop.json",
            " the path is a loop of symbolic links; give the path of a JSON file",
        ),
        (
            "too_many_containers.json",
            "2:16: Containers has 1001 entries, more than gearnat's limit of 1000; ",
        ),
        (
            "too_many_link_entries.json",
            "4:40: with this link the deployment has 160000 link entries (source in",
        ),
        (
            "too_many_mappings.json",
            "3:5: with this container the deployment has 54000 mappings (instances ",
        ),
        (
            "top_level_array.json",
            "1:1: expected an object for a deployment file, found an array",
        ),
        (
            "trailing_comma.json",
            "4:3: a comma before `]`; remove the trailing comma",
        ),
        (
            "trailing_garbage.json",
            "4:1: unexpected `}` after the end of the JSON document; remove everyth",
        ),
        (
            "truncated.json",
            "4:1: the file ends inside an object; expected a key in double quotes (",
        ),
        (
            "truncated_after_key.json",
            "2:15: the file ends inside an object; expected `:` after the key (the ",
        ),
        (
            "truncated_in_string.json",
            "3:13: this string is never closed; add the closing `\"`",
        ),
        (
            "unknown_key_publicport.json",
            "6:7: unknown key \"publicport\" in a container; did you mean \"publicport",
        ),
        (
            "unknown_protocol.json",
            "3:70: unknown Protocol \"sctp\"; use \"tcp\" or \"udp\"",
        ),
    ];
    let mut names: Vec<String> = std::fs::read_dir(bad_fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        cases.iter().map(|c| c.0).collect::<Vec<_>>(),
        "fixtures without a case"
    );
    for (file, expected) in cases {
        let path = bad_fixture(file);
        let message = load(&path, None).unwrap_err().to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        let expected = format!("{}:{expected}", path.display());
        assert!(
            message.starts_with(&expected),
            "{message}\ndoes not start with\n{expected}"
        );
    }
}

#[test]
fn raw_form_serializes_in_geards_camel_case() {
    let source =
        std::fs::read_to_string(fixture("rockmongo_mongodb.json.20140422-072112")).unwrap();
    let raw = parse_raw(&source, "out.json").unwrap();
    let written = serde_json::to_value(&raw).unwrap();
    let original: serde_json::Value = serde_json::from_str(&source).unwrap();
    assert_eq!(written["Instances"], original["Instances"]);
    assert_eq!(written["Containers"], original["Containers"]);
    let lower = parse_raw(
        &std::fs::read_to_string(fixture("rockmongo_mongodb.json")).unwrap(),
        "s",
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&lower).unwrap()["Containers"][0]["PublicPorts"][0]["External"],
        6060
    );
}

/// Links in a cycle are legitimate, as in geard: two services that dial each other (a <-> b)
/// each get the other's ports.
#[test]
fn a_link_cycle_is_a_valid_deployment() {
    let d = ok(&with(
        r#"{"Name": "ping", "Count": 1, "PublicPorts": [{"Internal": 80}], "Links": [{"To": "pong"}]},
{"Name": "pong", "Count": 2, "PublicPorts": [{"Internal": 81}], "Links": [{"To": "ping"}]}"#,
    ));
    assert_eq!(d.containers[0].links[0].to, "pong");
    assert_eq!(d.containers[1].links[0].to, "ping");
}

/// geard's cluster examples link a container to itself.
#[test]
fn a_container_may_link_to_itself() {
    let source = r#"{"Containers": [
  {"Name": "db", "Count": 2, "PublicPorts": [{"Internal": 27017}],
   "Links": [{"To": "db", "NonLocal": true, "MatchPort": true}]}
]}"#;
    let d = parse(source, "cluster.json", "cluster").unwrap();
    assert_eq!(d.containers[0].links[0].to, "db");
    assert!(d.containers[0].links[0].non_local && d.containers[0].links[0].match_port);
}

/// Files built to make the checks slow or the messages huge are refused quickly, each message
/// line short. Each case once cost seconds to minutes (a did-you-mean over two 60,000-character
/// names, quadratic scans of a link's Ports, of an instance's Ports or of the target's public
/// ports for every link) or printed its 100,000-digit number back.
#[test]
fn hostile_files_are_refused_quickly_with_short_messages() {
    let long_names = with(&format!(
        r#"{{"Name": "{}", "Count": 1, "PublicPorts": [{{"Internal": 80}}]}},
{{"Name": "web", "Count": 1, "Links": [{{"To": "{}"}}]}}"#,
        "a".repeat(60_000),
        "b".repeat(60_000)
    ));
    let many_keys = format!(
        "{{{}}}",
        (0..200_000)
            .map(|i| format!("\"k{i}\": 1"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let published: Vec<String> = (1..=10_000)
        .map(|i| format!("{{\"Internal\": {i}}}"))
        .collect();
    let listed: Vec<String> = (0..300_000).map(|i| (1 + i % 10_000).to_string()).collect();
    let many_link_ports = with(&format!(
        r#"{{"Name": "db", "Count": 1, "PublicPorts": [{}]}},
{{"Name": "web", "Links": [{{"To": "db", "Ports": [{}]}}]}}"#,
        published.join(","),
        listed.join(",")
    ));
    let instance_ports: Vec<String> = (0..100_000)
        .map(|i| {
            format!(
                "{{\"Internal\": {p}, \"External\": {p}}}",
                p = 1 + i % 65_535
            )
        })
        .collect();
    let many_instance_ports = format!(
        r#"{{"Containers": [{{"Name": "db", "Count": 1, "PublicPorts": [{{"Internal": 1}}]}}],
"Instances": [{{"Id": "db-1", "Ports": [{}]}}]}}"#,
        instance_ports.join(",")
    );
    let containers: Vec<String> = (0..1000)
        .map(|i| {
            let links = vec![r#"{"To": "c0999"}"#; 200].join(",");
            format!("{{\"Name\": \"c{i:04}\", \"Links\": [{links}]}}")
        })
        .collect();
    let many_links = with(&containers.join(",\n"));
    let links = vec![r#"{"To": "db", "Ports": [1]}"#; 100_000].join(",");
    let many_links_to_many_ports = with(&format!(
        r#"{{"Name": "db", "Count": 1, "PublicPorts": [{}]}},
{{"Name": "web", "Links": [{links}]}}"#,
        published.join(",")
    ));
    let long_number = with(&format!(
        r#"{{"Name": "web", "Count": {}}}"#,
        "9".repeat(100_000)
    ));
    for (what, src) in [
        ("long names", long_names),
        ("many keys", many_keys),
        ("many link ports", many_link_ports),
        ("many instance ports", many_instance_ports),
        ("many links", many_links),
        ("many links to many ports", many_links_to_many_ports),
        ("long number", long_number),
    ] {
        assert!(
            src.len() as u64 <= MAX_FILE_BYTES,
            "{what}: {} bytes",
            src.len()
        );
        let started = std::time::Instant::now();
        let lines = errors(&src);
        let took = started.elapsed();
        assert!(took.as_secs() < 10, "{what}: took {took:?}");
        for line in &lines {
            assert!(line.len() < 400, "{what}: a line of {} bytes", line.len());
        }
    }
}

/// A container with Count 0 claims no host port: no instance would hold it, and the host may
/// give it to another instance (a fuzzing finding, tests/fuzz/findings).
#[test]
fn an_external_of_count_zero_claims_nothing() {
    ok(&with(
        r#"{"Name": "web", "PublicPorts": [{"Internal": 80, "External": 4000}]},
{"Name": "api", "Count": 1, "PublicPorts": [{"Internal": 81, "External": 4000}]}"#,
    ));
}
