#!/usr/bin/env bash
# Builds vectl's Debian package from this checkout with cargo and dpkg-deb
# alone (no cargo packaging tool), and prints the .deb's path on stdout:
#   scripts/build-deb.sh [OUTDIR]        (default: target/debian)
# It holds:
#   /usr/bin/vectl                       `cargo build --release -p vectl`, stripped
#   /usr/bin/vectl-oci                   a link to it: the OCI runtime for podman/containerd
#   /lib/systemd/system/                 scripts/systemd/*.service, *.socket, *.timer,
#   /lib/systemd/system/lxcfs.service.d/vectl.conf   scripts/systemd/lxcfs-vectl.conf,
#                                        running /usr/bin/vectl
#   bash, zsh and fish completions       `vectl completion SHELL`
#   /usr/share/man/man8/vectl*.8.gz      `vectl man DIR`
#   /usr/share/doc/vectl/                README.md, copyright
#   /usr/share/vectl/busybox-rootfs.sh   the busybox template of the quick start
# and the maintainer scripts of packaging/debian/ (systemd units enabled and
# started on a first install as scripts/units.sh does; see each script).
# Version: the workspace's (Cargo.toml); Architecture: `dpkg --print-architecture`.
#
# VECTL_DEB_BIN=PATH packages that vectl binary instead of building one (the
# test suite's debug build, say); it must be of the workspace's version.
# VECTL_DEB_MAINTAINER overrides the Maintainer field. dpkg-deb compresses
# with xz unless DPKG_DEB_COMPRESSOR_TYPE says otherwise (the tests: gzip).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/target/debian}
umask 022

die() {
    echo "build-deb.sh: $*" >&2
    exit 1
}
for tool in dpkg dpkg-deb gzip sed; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev)"
done

# [workspace.package] version = "X" of the top Cargo.toml.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || die "$repo/Cargo.toml: no [workspace.package] version"
# Cargo's 1.0.0-rc.1 sorts before 1.0.0; Debian's ~ does the same.
deb_version=${version//-/\~}
arch=$(dpkg --print-architecture)

if [ -n "${VECTL_DEB_BIN:-}" ]; then
    bin=$VECTL_DEB_BIN
else
    cargo build --release -p vectl --bin vectl --manifest-path "$repo/Cargo.toml" >&2
    bin=${CARGO_TARGET_DIR:-$repo/target}/release/vectl
fi
[ -x "$bin" ] || die "$bin: not an executable"
# A stale binary would be packaged under the wrong version.
got=$("$bin" --version) || die "$bin --version failed"
[ "$got" = "vectl $version" ] || die "$bin: is \"$got\", the workspace is vectl $version"

mkdir -p "$out"
out=$(cd "$out" && pwd)
tree=$(mktemp -d "$out/.vectl-deb.XXXXXX")
trap 'rm -rf "$tree" "$tree.shlibs"' EXIT
chmod 0755 "$tree"

# The binary, stripped as Debian ships binaries (the debug build shrinks ~10x).
install -D -m 0755 "$bin" "$tree/usr/bin/vectl"
if command -v strip >/dev/null; then
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$tree/usr/bin/vectl"
fi
ln -s vectl "$tree/usr/bin/vectl-oci"

# The units, as the package installs vectl: /usr/bin, not /usr/local/bin.
units=()
mkdir -p "$tree/lib/systemd/system"
for f in "$repo"/scripts/systemd/*.service "$repo"/scripts/systemd/*.socket "$repo"/scripts/systemd/*.timer; do
    [ -e "$f" ] || continue
    u=$(basename "$f")
    sed 's#/usr/local/bin/vectl#/usr/bin/vectl#g' "$f" >"$tree/lib/systemd/system/$u"
    chmod 0644 "$tree/lib/systemd/system/$u"
    units+=("$u")
done
[ ${#units[@]} -gt 0 ] || die "$repo/scripts/systemd: no units"
# The drop-in that starts LXCFS as vectl needs it (and rebinds running VEs'
# /proc files after its restart); harmless while lxcfs (Recommends) is absent.
mkdir -p "$tree/lib/systemd/system/lxcfs.service.d"
sed 's#/usr/local/bin/vectl#/usr/bin/vectl#g' "$repo/scripts/systemd/lxcfs-vectl.conf" \
    >"$tree/lib/systemd/system/lxcfs.service.d/vectl.conf"
chmod 0644 "$tree/lib/systemd/system/lxcfs.service.d/vectl.conf"

# Completions where Debian's bash-completion, zsh and fish look for them.
completions=(
    "bash:usr/share/bash-completion/completions/vectl"
    "zsh:usr/share/zsh/vendor-completions/_vectl"
    "fish:usr/share/fish/vendor_completions.d/vectl.fish"
)
for c in "${completions[@]}"; do
    shell=${c%%:*} path=$tree/${c#*:}
    mkdir -p "$(dirname "$path")"
    "$bin" completion "$shell" >"$path"
    chmod 0644 "$path"
done

# Manual pages, compressed as Debian policy asks (-n: no name or time stamp).
man=$tree/usr/share/man/man8
mkdir -p "$man"
"$bin" man "$man"
gzip -9n "$man"/*.8

install -D -m 0644 "$repo/README.md" "$tree/usr/share/doc/vectl/README.md"
license=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^license *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
cat >"$tree/usr/share/doc/vectl/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vectl

Files: *
Copyright: the vectl authors
License: ${license:-Apache-2.0}
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
install -D -m 0755 "$repo/integration/rootfs/busybox-rootfs.sh" "$tree/usr/share/vectl/busybox-rootfs.sh"

# The shared libraries the binary links (libc6, libgcc-s1) with their
# versions, from dpkg-shlibdeps where dpkg-dev has it, which wants a
# debian/control beside it.
shlibs=libc6
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$tree.shlibs/debian"
    : >"$tree.shlibs/debian/control"
    if found=$(cd "$tree.shlibs" && dpkg-shlibdeps -O "$tree/usr/bin/vectl" 2>/dev/null); then
        found=${found#shlibs:Depends=}
        [ -n "$found" ] && shlibs=$found
    fi
    rm -rf "$tree.shlibs"
fi

# Depends: what vectl runs on every host: mkfs.btrfs and `btrfs send|receive`
# for the default pool and backups (btrfs-progs), nft for every VE's firewall
# (nftables); tar and cp are Essential. Recommends: what most hosts want:
# LXCFS (VEs' own limits in /proc), ssh and rsync (migrate, replicate,
# import-host). Suggests: the xfs pool (xfsprogs), `template import
# --debootstrap`, the busybox template script (busybox-static).
mkdir -p "$tree/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
cat >"$tree/DEBIAN/control" <<EOF
Package: vectl
Version: $deb_version
Architecture: $arch
Maintainer: ${VECTL_DEB_MAINTAINER:-vectl maintainers <maintainers@example.invalid>}
Installed-Size: $size
Depends: $shlibs, btrfs-progs, nftables
Recommends: lxcfs, openssh-client, rsync
Suggests: busybox-static, debootstrap, xfsprogs
Section: admin
Priority: optional
Description: OS-level virtualization: system containers on a stock Linux kernel
 vectl runs virtual environments (VEs): full system containers with their
 own init, process tree, hostname, network stack, users and files, on one
 shared, stock Linux kernel. VEs are made from shared, read-only OS
 templates, get guarantees and limits for CPU, RAM, swap, processes, disk
 and network that change live, live in a btrfs pool with per-VE disk limits
 and snapshots, and can be backed up, migrated and replicated.
 .
 This package holds the vectl command, its supervisor and boot units,
 shell completions and manual pages.
EOF
for s in postinst prerm postrm; do
    sed "s/@UNITS@/${units[*]}/" "$repo/packaging/debian/$s" >"$tree/DEBIAN/$s"
    chmod 0755 "$tree/DEBIAN/$s"
done
(cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$tree/DEBIAN/md5sums"
chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/md5sums"

deb=$out/vectl_${deb_version}_${arch}.deb
dpkg-deb --root-owner-group --build "$tree" "$deb" >/dev/null
echo "$deb"
