#!/usr/bin/env bash
# Installs what vectl needs to build, run and test on Debian/Ubuntu, as root:
# Debian packages that are missing (one `apt-get update`, then `apt-get install -y`)
# and a Rust toolchain if there is none. Safe to run again: it only installs what
# is missing.
set -euo pipefail

packages=(
    build-essential   # cc for crates that build C (zstd)
    pkg-config
    libseccomp-dev    # libseccomp: vectl oci compiles OCI seccomp profiles with it
    ca-certificates
    curl
    busybox-static    # the small template of the quick start and the tests
    tar
    zstd
    btrfs-progs       # mkfs.btrfs for the storage pool (vectl uses ioctls after that)
    e2fsprogs         # mkfs.ext4 (tests of pools on devices that hold another file system)
    xfsprogs          # mkfs.xfs, xfs_growfs for the xfs pool; xfs_io, xfs_quota in its tests
    util-linux        # unshare, script
    iproute2          # ip, for tests that build a LAN in a network namespace
    nftables          # nft: NAT, published ports, isolation and anti-spoofing rules
    debootstrap       # template import --debootstrap
    apt-utils         # apt-ftparchive: the local Debian mirror of the debootstrap test
    gnupg             # gpg: signs that mirror with a throwaway key
    procps
    crun              # vectl-bench's comparison: a crun container's memory beside a VE's
    lxcfs             # the /proc view of VEs (their own RAM, CPUs, uptime in /proc)
    openssh-client    # ssh: vectl migrate to another host
    openssh-server    # sshd: the migration tests start one in the target's namespace
    rsync             # vectl import-host: a server's files, over SSH or from a directory
    criu              # vectl migrate --live (tested in the VM: criu 3.17 fails on 6.18 kernels)
    zsh               # the package tests check the zsh and fish completion scripts
    fish
    groff-base        # ... and the man pages (groff -ww)
    dpkg-dev          # dpkg-shlibdeps for scripts/build-deb.sh
    podman            # the OCI runtime tests drive vectl-oci through podman (and runc beside it)
    runc
    containerd        # ... and through containerd's ctr
)

if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: run as root (vectl manages namespaces, cgroups and mounts)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Packages install, services do not start (openssh-server's sshd would
    # listen on the host): Debian's policy-rc.d, only while we install.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    rc=0
    apt-get install -y -qq "${missing[@]}" >/dev/null || rc=$?
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
    fi
    [ "$rc" = 0 ] || exit "$rc"
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "deps.sh: installing the Rust toolchain (rustup, minimal profile)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
cargo --version >/dev/null
