//! gearnat's nftables table over netlink: commit changes in one batch, dump it back.
