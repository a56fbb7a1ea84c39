#!/usr/bin/env bash
# Installs gearnat with Docker on Fedora (dnf) or Debian (apt-get), with systemd units for
# `gearnat watch` and for re-applying the saved deployments at boot, then applies a deployment.
#
#   sudo vagrant/provision.sh [DEPLOYMENT.json]
#
# Vagrant runs it inside the VM; it runs the same way directly on a Fedora or Debian host.
# GEARNAT_SRC: the repository (default: this script's parent folder).
# GEARNAT_SKIP_PACKAGES=1: packages are there already (CI installs them itself).
set -euo pipefail

src=${GEARNAT_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
deployment=${1:-$src/vagrant/examples/mongo-express_mongodb.json}
say() { printf 'provision: %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "provision: run as root (sudo)" >&2; exit 2; }
[ -f "$deployment" ] || { echo "provision: no deployment file $deployment" >&2; exit 2; }

install_packages() {
    if command -v dnf >/dev/null; then
        say "installing packages with dnf"
        dnf install -y moby-engine nftables libnftnl-devel libmnl-devel gcc pkgconf-pkg-config \
            iproute cargo rust
    elif command -v apt-get >/dev/null; then
        say "installing packages with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq docker.io nftables libnftnl-dev libmnl-dev pkg-config gcc \
            iproute2 >/dev/null
        if ! command -v cargo >/dev/null; then
            # Debian's own cargo is older than gearnat needs; rustup (Debian 13 and later)
            # brings a current toolchain.
            apt-get install -y -qq rustup >/dev/null
            rustup default stable
        fi
    else
        echo "provision: neither dnf nor apt-get found; install Docker, nftables, libnftnl and" \
            "libmnl development files and a Rust toolchain by hand" >&2
        exit 2
    fi
}

have_systemd() { [ -d /run/systemd/system ]; }

start_docker() {
    if have_systemd; then
        systemctl enable --now docker
    elif ! docker info >/dev/null 2>&1; then
        say "starting dockerd (no systemd here)"
        dockerd >/var/log/gearnat-dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "provision: Docker did not answer within 60 s (see its log)" >&2
    exit 1
}

build_and_install() {
    say "building gearnat"
    export PATH="$HOME/.cargo/bin:$PATH"
    (cd "$src" && cargo build --release --locked)
    install -D -m 0755 "$src/target/release/gearnat" /usr/local/bin/gearnat
    install -D -m 0644 "$src/README.md" /usr/local/share/doc/gearnat/README.md
}

install_units() {
    if ! have_systemd; then
        say "no systemd: skipping the gearnat-watch and gearnat-restore units"
        return
    fi
    install -m 0644 "$src/vagrant/gearnat-watch.service" /etc/systemd/system/
    install -m 0644 "$src/vagrant/gearnat-restore.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable gearnat-restore.service
    systemctl enable --now gearnat-watch.service
}

[ "${GEARNAT_SKIP_PACKAGES:-0}" = 1 ] || install_packages
start_docker
build_and_install
install_units
say "applying $deployment"
/usr/local/bin/gearnat apply --runtime docker "$deployment"
/usr/local/bin/gearnat status
