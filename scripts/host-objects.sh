#!/usr/bin/env bash
# Prints what the host (its initial namespaces) holds that a vectl test could
# leave behind: network links, nftables tables, loop devices, mounts, entries
# of the registry of roots, and the cgroups below this script's own. test.sh
# compares the list before and after the suite: the tests make all of these in
# namespaces or directories of their own and must take them away again, pass
# or fail.
set -uo pipefail
ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print "link " $2 }'
nft list tables 2>/dev/null | sed 's/^/nft /'
losetup -n -O NAME,BACK-FILE 2>/dev/null | sed 's/^/loop /'
awk '{ print "mount " $5 }' /proc/self/mountinfo
# The host's registry of vectl roots (tests use registries of their own).
find /var/lib/vectl-roots -mindepth 1 -maxdepth 1 ! -name .lock 2>/dev/null | sed 's/^/root /'
while IFS=: read -r _ ctrls path; do
    case $ctrls in
    '') dirs="/sys/fs/cgroup/unified /sys/fs/cgroup" ;;
    name=*) dirs="/sys/fs/cgroup/${ctrls#name=}" ;;
    *) dirs="/sys/fs/cgroup/${ctrls%%,*}" ;;
    esac
    for d in $dirs; do
        [ -e "$d/cgroup.procs" ] || continue
        find "$d${path%/}" -mindepth 1 -type d -name 'vt-*' 2>/dev/null | sed 's/^/cgroup /'
        break
    done
done </proc/self/cgroup
exit 0
