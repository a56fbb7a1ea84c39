//! Running instances: network namespaces (and later containers) joined to gearnat's bridge.
