#!/usr/bin/env bash
# The provisioning script's Debian path, run for real up to a working deployment, as CI can:
# no registry is reachable, so the deployment uses images imported offline from Debian's
# busybox-static (a web container serving a page on 80, published on 6060, linked to a db
# container answering on 27017). Needs root, a running dockerd and the build packages; leaves
# nothing behind (deployment, images, state of its own).
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
name=ci-example
state=/var/lib/gearnat
cleanup() {
    /usr/local/bin/gearnat down --name "$name" >/dev/null 2>&1 || true
    docker rmi -f gearnat-ci/web:1 gearnat-ci/db:1 >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

image() { # NAME SCRIPT
    local root=$work/root-${1//[^a-z]/_}
    mkdir -p "$root/bin" "$root/www" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh httpd nc sleep echo cat; do ln -sf busybox "$root/bin/$applet"; done
    echo "gearnat on 6060" > "$root/www/index.html"
    tar -C "$root" -c . | docker import --change "CMD [\"sh\", \"-c\", \"$2\"]" - "$1" >/dev/null
}
image gearnat-ci/web:1 "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"
image gearnat-ci/db:1 "trap 'exit 0' TERM; nc -ll -p 27017 -e echo db & wait"

cat > "$work/$name.json" <<JSON
{
  "containers": [
    {"name": "web", "count": 1, "image": "gearnat-ci/web:1",
     "publicports": [{"internal": 80, "external": 6060}], "links": [{"to": "db"}]},
    {"name": "db", "count": 1, "image": "gearnat-ci/db:1",
     "publicports": [{"internal": 27017}]}
  ]
}
JSON

if [ -e "$state/deployments/$name.state.json" ]; then
    echo "ci-check: a deployment named $name exists already; not touching it" >&2
    exit 1
fi
GEARNAT_SKIP_PACKAGES=1 GEARNAT_SRC="$src" "$src/vagrant/provision.sh" "$work/$name.json"

# The public port answers on the host, and the link answers inside web.
page=$(timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6060
    printf "GET / HTTP/1.0\r\n\r\n" >&3; cat <&3')
case "$page" in
    *"gearnat on 6060"*) ;;
    *) echo "ci-check: 127.0.0.1:6060 answered '$page'" >&2; exit 1 ;;
esac
reply=$(docker exec web-1 sh -c 'echo | nc -w 3 127.0.0.1 27017')
[ "$reply" = "db" ] || { echo "ci-check: the link answered '$reply'" >&2; exit 1; }
echo "ci-check: provisioned, http://127.0.0.1:6060/ and web-1's link to db answer"
