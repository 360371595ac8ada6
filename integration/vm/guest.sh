#!/bin/bash
# The VM suite's runner, PID 1 of the guest booted by integration/vm/run (the
# initramfs's /init switches root to the host's / over 9p with a tmpfs overlay and
# execs this with the host's bash).
#
# Sets up the guest (mounts, the full module tree for on-demand loading, cgroup v2
# with this runner in the leaf /runner and the tests' VEs below /vectl-tests),
# prints the facts the suite relies on (kernel, cgroup mounts, capabilities), runs
# each module of the test executable in /run/vectl-vm/tests ("MODULE<TAB>PATH<TAB>ARGS"),
# writes the suite's status to /run/vectl-vm/status and powers off.
#
# No `set -e`: whatever fails, the status must be written and the VM powered off.
set -uo pipefail

out=/run/vectl-vm
# shellcheck source=/dev/null
. "$out/env"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8

status=1
finish() {
    echo "$status" >"$out/status"
    echo "VECTL-VM: exit $status"
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
trap finish EXIT

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# /tmp on the scratch disk (ext4 on /dev/vda) with the bfq I/O scheduler, so the
# tests' VEs have a real disk to throttle and weigh. Falls back to tmpfs (and the
# I/O tests then SKIP) if the disk is missing.
scratch_tmp() {
    /sbin/modprobe virtio_blk 2>/dev/null || true
    local i
    for i in $(seq 50); do
        [ -b /dev/vda ] && break
        sleep 0.1
    done
    [ -b /dev/vda ] || { echo "vm: no scratch disk; /tmp on tmpfs"; return 1; }
    /sbin/mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda &&
        mount -t ext4 -o noatime /dev/vda /tmp &&
        chmod 1777 /tmp || return 1
    /sbin/modprobe bfq 2>/dev/null || true
    echo bfq >/sys/block/vda/queue/scheduler 2>/dev/null || true
    echo "vm: /tmp on the scratch disk vda (ext4, $(grep -o '\[[a-z-]*\]' /sys/block/vda/queue/scheduler) scheduler)"
}

setup() {
    # A checkout below /tmp or /var/tmp (a CI clone, say) must stay visible under
    # the guest's own tmpfs there: keep a bind of it aside and put it back.
    local kept=""
    case "$VM_REPO/" in
    /tmp/* | /var/tmp/*)
        kept=/run/vectl-repo
        mkdir -p "$kept" && mount --bind "$VM_REPO" "$kept" || return 1
        ;;
    esac
    # The host's tools from the host's / see the guest kernel's modules, so modprobe
    # and the kernel's on-demand loading (which runs /sbin/modprobe here) work.
    mkdir -p "/lib/modules/$VM_KVER" &&
        mount --bind "$VM_MODULES_DIR" "/lib/modules/$VM_KVER" || return 1
    mkdir -p /dev/pts /dev/shm &&
        mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts &&
        mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm &&
        mount -t tmpfs -o mode=755 tmpfs /var/tmp &&
        chmod 1777 /var/tmp || return 1
    scratch_tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp || return 1
    if [ -n "$kept" ]; then
        mkdir -p "$VM_REPO" && mount --bind "$kept" "$VM_REPO" || return 1
    fi
    ip link set lo up || return 1
    echo vectl-vm >/proc/sys/kernel/hostname

    if [ "${VM_CGROUP:-v2}" = v1 ]; then
        # Legacy cgroup v1 only, as a host without the unified hierarchy has
        # it: one hierarchy per controller and systemd's named one, no cgroup2.
        mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup || return 1
        local c
        for c in cpu cpuacct cpuset memory pids blkio devices freezer; do
            mkdir "/sys/fs/cgroup/$c" &&
                mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || return 1
        done
        mkdir /sys/fs/cgroup/systemd &&
            mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || return 1
        return 0
    fi
    # cgroup v2: the root's controllers for everyone below; this runner (and so
    # every test) in the leaf /runner, so /vectl-tests can delegate.
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || return 1
    mkdir /sys/fs/cgroup/runner &&
        echo $$ >/sys/fs/cgroup/runner/cgroup.procs &&
        echo "+cpu +memory +pids +io" >/sys/fs/cgroup/cgroup.subtree_control || return 1
}

# The facts the suite relies on; fails when the guest is not what it must be.
facts() {
    local ok=0 capeff
    echo "vm: guest kernel: $(uname -r) ($(uname -v))"
    echo "vm: cgroup mounts:"
    grep -E '^[^ ]+ [^ ]+ cgroup2? ' /proc/self/mounts | sed 's/^/vm:   /'
    if [ "${VM_CGROUP:-v2}" = v1 ]; then
        if grep -qE '^[^ ]+ [^ ]+ cgroup2 ' /proc/self/mounts; then
            echo "vm: error: a cgroup2 hierarchy is mounted"
            ok=1
        fi
        if ! grep -qE '^[^ ]+ /sys/fs/cgroup/memory cgroup ' /proc/self/mounts; then
            echo "vm: error: no cgroup v1 memory hierarchy"
            ok=1
        fi
    elif grep -qE '^[^ ]+ [^ ]+ cgroup ' /proc/self/mounts; then
        echo "vm: error: a cgroup v1 hierarchy is mounted"
        ok=1
    fi
    if [ "${VM_CGROUP:-v2}" = v2 ] && ! grep -qE '^[^ ]+ /sys/fs/cgroup cgroup2 ' /proc/self/mounts; then
        echo "vm: error: /sys/fs/cgroup is not cgroup2"
        ok=1
    fi
    if [ "${VM_CGROUP:-v2}" = v2 ]; then
        echo "vm: cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
        echo "vm: root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    fi
    echo "vm: runner cgroup: $(cat /proc/self/cgroup | tr '\n' ' ')"
    capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
    echo "vm: CapEff: $capeff ($(capsh --decode="$capeff" 2>/dev/null | sed 's/^.*=//' || echo '?'))"
    if (((0x$capeff >> 24 & 1) == 0)); then
        echo "vm: error: CAP_SYS_RESOURCE is missing"
        ok=1
    fi
    echo "vm: modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
    return $ok
}

# Runs the test executables; the status is 0 only if every one passed and at least
# one test ran.
run_tests() {
    local target exe filters rc=0 r ran=0 n log
    export VECTL_BIN=$VM_VECTL_BIN
    export VECTL_TEST_CGROUP_BASE=/vectl-tests
    # Local, not on the 9p share: concurrent appends over 9p are not atomic.
    export VECTL_SKIP_LOG=/tmp/vectl-vm-skips.log
    export VECTL_IN_VM=1 RUST_BACKTRACE=1
    log=/tmp/vectl-vm-test.log
    while IFS=$'\t' read -r target exe filters; do
        # shellcheck disable=SC2086
        echo "vm: ---- $target ($(printf '%s\n' $filters | grep -vc '^--') tests)"
        # cargo runs integration tests from the package's directory.
        # shellcheck disable=SC2086
        (cd "$VM_REPO/integration" && "$exe" $filters) 2>&1 | tee "$log"
        r=${PIPESTATUS[0]}
        n=$(sed -n 's/^test result: .*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p' "$log" |
            awk '{ s += $1 + $2 } END { print s + 0 }')
        ran=$((ran + n))
        if [ "$r" != 0 ]; then
            echo "vm: $target FAILED (exit $r)"
            rc=1
        fi
    done <"$out/tests"
    if [ "$ran" = 0 ]; then
        echo "vm: error: no test ran (does the filter match any test?)"
        rc=1
    fi
    if [ -s "$VECTL_SKIP_LOG" ]; then
        cp "$VECTL_SKIP_LOG" "$out/skips.log"
        echo "vm: skipped in the VM:"
        sed 's/^/vm:   /' "$VECTL_SKIP_LOG"
    fi
    return $rc
}

if ! setup; then
    echo "vm: error: the guest setup failed"
    exit
fi
if ! facts; then
    echo "vm: error: the guest is not a pure cgroup-${VM_CGROUP:-v2}, full-capability kernel"
    exit
fi
# LXCFS for the VEs' /proc view, as the set-up starts it on a host.
if ! "$VM_REPO/scripts/lxcfs.sh" >/dev/null; then
    echo "vm: LXCFS did not start: VEs show the host's /proc values"
fi
echo "VECTL-VM: ready $(uptime_s)s after kernel start"
if [ -n "${VM_EXEC:-}" ]; then
    # A developer's command instead of the suite (VECTL_VM_EXEC), same environment.
    echo "vm: ---- VECTL_VM_EXEC: $VM_EXEC"
    (
        export VECTL_BIN=$VM_VECTL_BIN VECTL_TEST_CGROUP_BASE=/vectl-tests VECTL_IN_VM=1
        cd "$VM_REPO" && bash -c "$VM_EXEC"
    )
    status=$?
else
    run_tests
    status=$?
fi
