//! gearnat's table in nft syntax: what `compile` prints and what `nft -f` loads.
//!
//! It spells the same ruleset as `program` (checked by the golden test in `tests`).

use std::fmt::Write;

use super::program::{map_name, PORT_MAP_SIZE};
use crate::model::Proto;
use crate::ruleset::{Element, Layout, TABLE};

/// The table of `layout` with `elements`, loadable by `nft -f`.
///
/// Loading it where the table already exists adds to that table (nft's `add` semantics); elements
/// whose map `layout` lacks follow the table as `add element` lines, which nft rejects.
pub fn render(layout: &Layout, elements: &[Element]) -> String {
    let mut sorted: Vec<&Element> = elements.iter().collect();
    sorted.sort();
    let maps: Vec<&str> = Proto::ALL.iter().map(|p| layout.map_name(*p)).collect();

    let mut out = String::new();
    let _ = writeln!(out, "table ip {TABLE} {{");
    let _ = writeln!(out, "\tcomment \"{}\"", layout.comment());
    for map in &maps {
        let mine: Vec<&Element> = sorted
            .iter()
            .copied()
            .filter(|e| map_name(e) == *map)
            .collect();
        render_map(&mut out, layout, map, &mine);
    }
    out.push_str(GUARD);
    match layout {
        Layout::Host { pool } => {
            for (chain, hook, priority) in [
                ("prerouting", "prerouting", "dstnat"),
                ("output", "output", "-100"),
            ] {
                let _ = writeln!(out, "\tchain {chain} {{");
                let _ = writeln!(
                    out,
                    "\t\ttype nat hook {hook} priority {priority}; policy accept;"
                );
                for proto in Proto::ALL {
                    let map = layout.map_name(proto);
                    let _ = writeln!(
                        out,
                        "\t\tfib daddr type local dnat ip to {proto} dport map @{map}"
                    );
                }
                out.push_str("\t}\n");
            }
            out.push_str(POSTROUTING_HEAD);
            out.push_str(LOOPBACK_MASQUERADE);
            let _ = writeln!(
                out,
                "\t\t# hairpin: an instance reaching an instance through a host port\n\
                 \t\tip saddr {pool} ip daddr {pool} ct status dnat masquerade\n\
                 \t\t# instances reaching other hosts leave with the host's address\n\
                 \t\tip saddr {pool} ip daddr != {pool} masquerade"
            );
            out.push_str("\t}\n");
            let _ = writeln!(
                out,
                "\tchain forward {{\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\t# only the declared mappings reach the instances from outside\n\
                 \t\tip daddr {pool} ct status dnat accept\n\
                 \t\tip saddr != {pool} ip daddr {pool} ct state invalid,new drop\n\
                 \t}}"
            );
        }
        Layout::Instance => {
            out.push_str(
                "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n",
            );
            for proto in Proto::ALL {
                let map = layout.map_name(proto);
                let _ = writeln!(out, "\t\tdnat ip to ip daddr . {proto} dport map @{map}");
            }
            out.push_str("\t}\n");
            out.push_str(POSTROUTING_HEAD);
            out.push_str(LOOPBACK_MASQUERADE);
            out.push_str("\t}\n");
        }
    }
    out.push_str("}\n");

    let strays: Vec<&Element> = sorted
        .iter()
        .copied()
        .filter(|e| !maps.contains(&map_name(e)))
        .collect();
    for element in strays {
        let _ = writeln!(
            out,
            "add element ip {TABLE} {} {{ {} }}",
            map_name(element),
            element_text(element)
        );
    }
    out
}

const GUARD: &str = "\tchain guard {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\t# CVE-2020-8558: route_localnet must not expose 127.0.0.0/8 to other hosts
\t\tiif != \"lo\" ip daddr 127.0.0.0/8 drop
\t}
";

const POSTROUTING_HEAD: &str = "\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
";

const LOOPBACK_MASQUERADE: &str =
    "\t\t# DNATed loopback traffic leaving the host needs a routable source address
\t\tip saddr 127.0.0.0/8 oif != \"lo\" ct status dnat masquerade
";

fn render_map(out: &mut String, layout: &Layout, map: &str, elements: &[&Element]) {
    let (key, size) = match layout {
        Layout::Host { .. } => ("inet_service", Some(PORT_MAP_SIZE)),
        Layout::Instance => ("ipv4_addr . inet_service", None),
    };
    let _ = writeln!(out, "\tmap {map} {{");
    let _ = writeln!(out, "\t\ttype {key} : ipv4_addr . inet_service");
    if let Some(size) = size {
        let _ = writeln!(out, "\t\tsize {size}");
    }
    if !elements.is_empty() {
        out.push_str("\t\telements = {\n");
        for (i, element) in elements.iter().enumerate() {
            let sep = if i + 1 < elements.len() { "," } else { "" };
            let _ = writeln!(out, "\t\t\t{}{sep}", element_text(element));
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

/// One element in nft 1.0.6's map syntax: the comment goes between key and data.
fn element_text(element: &Element) -> String {
    let comment = element.owner().comment();
    match element {
        Element::Port {
            host_port, target, ..
        } => {
            format!(
                "{host_port} comment \"{comment}\" : {} . {}",
                target.ip(),
                target.port()
            )
        }
        Element::Link { dial, via, .. } => format!(
            "{} . {} comment \"{comment}\" : {} . {}",
            dial.ip(),
            dial.port(),
            via.ip(),
            via.port()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Owner;

    fn owner(instance: &str) -> Owner {
        Owner {
            deployment: "seed".into(),
            instance: instance.into(),
        }
    }

    #[test]
    fn host_table() {
        let layout = Layout::Host {
            pool: "10.211.0.0/16".parse().unwrap(),
        };
        let elements = [
            Element::Port {
                proto: Proto::Udp,
                host_port: 5353,
                target: "10.211.0.3:53".parse().unwrap(),
                owner: owner("dns-1"),
            },
            Element::Port {
                proto: Proto::Tcp,
                host_port: 6060,
                target: "10.211.0.2:80".parse().unwrap(),
                owner: owner("rockmongo-1"),
            },
            Element::Port {
                proto: Proto::Tcp,
                host_port: 6061,
                target: "10.211.0.4:80".parse().unwrap(),
                owner: owner("rockmongo-2"),
            },
        ];
        let expected = "table ip gearnat {
	comment \"gearnat r4 host pool 10.211.0.0/16\"
	map tcp_ports {
		type inet_service : ipv4_addr . inet_service
		size 65536
		elements = {
			6060 comment \"gearnat:seed/rockmongo-1\" : 10.211.0.2 . 80,
			6061 comment \"gearnat:seed/rockmongo-2\" : 10.211.0.4 . 80
		}
	}
	map udp_ports {
		type inet_service : ipv4_addr . inet_service
		size 65536
		elements = {
			5353 comment \"gearnat:seed/dns-1\" : 10.211.0.3 . 53
		}
	}
	chain guard {
		type filter hook prerouting priority raw; policy accept;
		# CVE-2020-8558: route_localnet must not expose 127.0.0.0/8 to other hosts
		iif != \"lo\" ip daddr 127.0.0.0/8 drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local dnat ip to tcp dport map @tcp_ports
		fib daddr type local dnat ip to udp dport map @udp_ports
	}
	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local dnat ip to tcp dport map @tcp_ports
		fib daddr type local dnat ip to udp dport map @udp_ports
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		# DNATed loopback traffic leaving the host needs a routable source address
		ip saddr 127.0.0.0/8 oif != \"lo\" ct status dnat masquerade
		# hairpin: an instance reaching an instance through a host port
		ip saddr 10.211.0.0/16 ip daddr 10.211.0.0/16 ct status dnat masquerade
		# instances reaching other hosts leave with the host's address
		ip saddr 10.211.0.0/16 ip daddr != 10.211.0.0/16 masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		# only the declared mappings reach the instances from outside
		ip daddr 10.211.0.0/16 ct status dnat accept
		ip saddr != 10.211.0.0/16 ip daddr 10.211.0.0/16 ct state invalid,new drop
	}
}
";
        assert_eq!(render(&layout, &elements), expected);
    }

    #[test]
    fn instance_table() {
        let elements = [Element::Link {
            proto: Proto::Tcp,
            dial: "127.0.0.1:27017".parse().unwrap(),
            via: "10.211.0.1:4000".parse().unwrap(),
            owner: owner("web-1"),
        }];
        let text = render(&Layout::Instance, &elements);
        assert!(text.starts_with("table ip gearnat {\n\tcomment \"gearnat r4 instance\"\n"));
        assert!(text.contains(
            "\tmap tcp_links {\n\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\
             \t\telements = {\n\
             \t\t\t127.0.0.1 . 27017 comment \"gearnat:seed/web-1\" : 10.211.0.1 . 4000\n\t\t}\n"
        ));
        assert!(text.contains(
            "\tmap udp_links {\n\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\t}\n"
        ));
        assert!(text.contains("\t\tdnat ip to ip daddr . udp dport map @udp_links\n"));
        assert!(!text.contains("fib"));
        assert!(!text.contains("hairpin"));
        assert!(text.ends_with("ct status dnat masquerade\n\t}\n}\n"));
    }

    #[test]
    fn elements_outside_the_layout_are_not_hidden() {
        let elements = [Element::Port {
            proto: Proto::Tcp,
            host_port: 80,
            target: "10.0.0.1:80".parse().unwrap(),
            owner: owner("web-1"),
        }];
        let text = render(&Layout::Instance, &elements);
        let stray = "add element ip gearnat tcp_ports \
                     { 80 comment \"gearnat:seed/web-1\" : 10.0.0.1 . 80 }";
        assert!(text.ends_with(&format!("}}\n{stray}\n")));
    }
}
