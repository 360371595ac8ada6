#!/usr/bin/env bash
# Makes sure LXCFS serves the /proc view of VEs at /var/lib/lxcfs (vectl's default
# LXCFS directory; `vectl host set --lxcfs-dir` changes it per root), as root.
#   - With systemd: installs vectl's drop-in for lxcfs.service (loadavg and CPU
#     limit virtualization; after every LXCFS start, the running VEs' /proc files
#     are bound anew), then enables and (re)starts the service.
#   - Without systemd (a container, a VM's own init): starts lxcfs in the
#     background with the same options.
# Prints `started PID` when it started lxcfs itself, so that a caller (test.sh)
# can stop what it started. Safe to run again: a live LXCFS is kept.
set -euo pipefail
dir=/var/lib/lxcfs
opts=(--enable-loadavg --enable-cfs --enable-pidfd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

live() { mountpoint -q "$dir" && head -c1 "$dir/proc/meminfo" >/dev/null 2>&1; }
wait_live() {
    local i
    for i in $(seq 100); do
        live && return 0
        sleep 0.1
    done
    return 1
}

if ! command -v lxcfs >/dev/null; then
    echo "lxcfs.sh: lxcfs is not installed (scripts/deps.sh installs it)" >&2
    exit 1
fi
if [ -d /run/systemd/system ] && ! systemd-detect-virt -qc 2>/dev/null; then
    dropin=/etc/systemd/system/lxcfs.service.d/vectl.conf
    if ! cmp -s "$here/systemd/lxcfs-vectl.conf" "$dropin"; then
        install -D -m 0644 "$here/systemd/lxcfs-vectl.conf" "$dropin"
        systemctl daemon-reload
        systemctl enable -q lxcfs
        systemctl restart lxcfs
    elif ! live; then
        systemctl enable -q lxcfs
        systemctl restart lxcfs
    fi
    wait_live || { echo "lxcfs.sh: lxcfs.service did not mount $dir" >&2; exit 1; }
    exit 0
fi
live && exit 0
# A dead LXCFS leaves its mount behind.
if mountpoint -q "$dir"; then
    umount -l "$dir"
fi
modprobe fuse 2>/dev/null || true
mkdir -p "$dir"
setsid lxcfs "${opts[@]}" -p /run/lxcfs.pid "$dir" </dev/null >/var/log/lxcfs.log 2>&1 &
pid=$!
if ! wait_live; then
    echo "lxcfs.sh: lxcfs did not mount $dir (see /var/log/lxcfs.log)" >&2
    exit 1
fi
echo "started $pid"
