//! The link layer over rtnetlink: bridge, veth pairs, addresses, routes, sysctls.
