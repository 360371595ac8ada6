#!/usr/bin/env bash
# vectl quick start, for a fresh Debian/Ubuntu machine, as root:
#   - installs the packages vectl needs (and Rust, if missing),
#   - starts LXCFS (each VE's own limits in its /proc),
#   - builds vectl and installs it as /usr/local/bin/vectl, with its supervisor
#     and boot units (scripts/units.sh),
#   - runs its main job on the embedded defaults: initialises /var/lib/vectl
#     (a loop-backed btrfs pool in /var/lib/vectl/pool.img), imports a small
#     busybox template, creates and starts three web VEs (web1..web3) with RAM,
#     CPU and disk limits, lists them, shows the pool and fetches a page from one.
# Running it again is safe: what exists is kept.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/deps.sh
echo "== LXCFS (each VE's own limits in its /proc)"
if ! scripts/lxcfs.sh >/dev/null; then
    echo "quickstart: LXCFS did not start: VEs show the host's values in /proc (see README)"
fi

echo "== building vectl"
cargo build --release --workspace --bins
install -m 0755 target/release/vectl /usr/local/bin/vectl
ln -sf vectl /usr/local/bin/vectl-oci   # the OCI runtime for podman and containerd
echo "== the supervisor and the boot unit (scripts/units.sh)"
scripts/units.sh

export VECTL_ROOT=${VECTL_ROOT:-/var/lib/vectl}
echo "== vectl init ($VECTL_ROOT)"
vectl init

# (Outputs are read whole before grep looks at them: with pipefail, a `grep -q`
# that stops reading early would fail the pipeline with vectl's SIGPIPE.)
templates=$(vectl --json template list)
if ! grep -q '"name": "busybox"' <<<"$templates"; then
    echo "== importing the busybox template"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    integration/rootfs/busybox-rootfs.sh "$tmp/rootfs"
    vectl template import busybox --from-dir "$tmp/rootfs" --message "quick start"
fi

# Disk limits need the btrfs pool (a host initialised earlier with --backend dir
# has none).
disk=()
pool=$(vectl --json pool info)
if grep -q '"backend": "btrfs"' <<<"$pool"; then
    disk=(--disk 256M)
fi
for ve in web1 web2 web3; do
    if ! vectl --json show "$ve" >/dev/null 2>&1; then
        vectl create "$ve" --template busybox --ram 64M --cpu-limit 50% --pids 100 "${disk[@]}" \
            --onboot yes --restart on-failure
    fi
    if ! grep -q '"status": "running"' <<<"$(vectl --json show "$ve")"; then
        vectl start "$ve"
    fi
done

echo "== vectl list"
vectl list
echo "== vectl pool info"
vectl pool info
echo "== vectl net list"
vectl net list
# Each VE answers on its own address on the default nat network.
for ve in web1 web2 web3; do
    ip=$(vectl --json show "$ve" | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -n1)
    if [ -z "$ip" ]; then
        echo "VE $ve has no network interface (created before the host had a default network)"
        continue
    fi
    echo "== curl http://$ip/ (VE $ve)"
    page=$(curl -sS --retry 5 --retry-delay 1 --retry-connrefused -m 5 "http://$ip/")
    echo "$page"
done
# web1's port 80, published on the host's addresses as port 18080.
vectl set web1 --publish 18080:80
echo "== curl http://127.0.0.1:18080/ (published from web1)"
page=$(curl -sS --retry 5 --retry-delay 1 --retry-connrefused -m 5 http://127.0.0.1:18080/)
echo "$page"
echo
echo "Done. Try: vectl enter web2 | vectl set web3 --ram 128M --net-limit 100mbit | vectl stop web1 | vectl destroy --force web1"
