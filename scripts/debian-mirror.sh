#!/usr/bin/env bash
# Builds the small, signed Debian mirror that the debootstrap tests import from:
# the packages of a minbase bookworm plus netbase (the import test) and systemd,
# sshd and cron (the systemd VE tests), a Packages index, a Release
# file signed with a throwaway key, and that key as keyring.gpg. The test serves it
# over HTTP on loopback inside its own network namespace, so the test itself never
# reaches outside the machine; only this set-up step downloads, like apt-get does.
# It also leaves systemd-rootfs.tar, the systemd tree debootstrap makes from that
# mirror, for the VM suite.
#
#   scripts/debian-mirror.sh [OUT]      (default: target/debian-mirror)
#
# Safe to run again: a finished mirror is kept. VECTL_DEBIAN_UPSTREAM overrides
# where the packages come from (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debian-mirror}
suite=bookworm
include=netbase
systemd_include=systemd-sysv,openssh-server,cron
upstream=${VECTL_DEBIAN_UPSTREAM:-http://deb.debian.org/debian}

if [ -f "$out/systemd-rootfs.tar" ] && [ "$(cat "$out/systemd-include" 2>/dev/null)" = "$systemd_include" ]; then
    exit 0
fi
for prog in debootstrap apt-ftparchive gpg; do
    if ! command -v "$prog" >/dev/null; then
        echo "debian-mirror.sh: $prog is not installed (scripts/deps.sh installs it)" >&2
        exit 1
    fi
done
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "debian-mirror.sh: downloading a minbase $suite ($arch) from $upstream"
debootstrap --download-only --variant=minbase --include="$include,$systemd_include" --arch="$arch" \
    "$suite" "$work/root" "$upstream" >"$work/log" 2>&1 || {
    tail -5 "$work/log" >&2
    exit 1
}

new="$out.new"
rm -rf "$new"
repo="$new/debian"
mkdir -p "$repo/pool/main" "$repo/dists/$suite/main/binary-$arch"
for deb in "$work"/root/var/cache/apt/archives/*.deb; do
    # Pool file names carry no epoch (apt's cache names have it as "1%3a").
    base=$(basename "$deb" | sed 's/_[0-9]*%3a/_/')
    cp "$deb" "$repo/pool/main/$base"
done
(
    cd "$repo"
    apt-ftparchive packages pool >"dists/$suite/main/binary-$arch/Packages"
    gzip -9 -k "dists/$suite/main/binary-$arch/Packages"
    apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=vectl-test \
        -o APT::FTPArchive::Release::Suite="$suite" \
        -o APT::FTPArchive::Release::Codename="$suite" \
        -o APT::FTPArchive::Release::Architectures="$arch" \
        -o APT::FTPArchive::Release::Components=main \
        release "dists/$suite" >"$work/Release"
    mv "$work/Release" "dists/$suite/Release"
)
export GNUPGHOME="$work/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'vectl test mirror' ed25519 sign never
gpg --batch --quiet --export >"$new/keyring.gpg"
gpg --batch --quiet --yes -abs -o "$repo/dists/$suite/Release.gpg" "$repo/dists/$suite/Release"
gpg --batch --quiet --yes --clearsign -o "$repo/dists/$suite/InRelease" "$repo/dists/$suite/Release"
gpgconf --kill all 2>/dev/null || true
# A tree of the systemd VE, made from this mirror, as a tar: the VM suite boots it
# (debootstrap's own run there, under TCG, would take many minutes). In a mount
# namespace of its own, so nothing debootstrap mounts can stay behind.
echo "debian-mirror.sh: building the systemd tree for the VM suite"
unshare -m --propagation private debootstrap --variant=minbase \
    --include="$include,$systemd_include" --keyring="$new/keyring.gpg" \
    "$suite" "$work/tree" "file://$(realpath "$repo")" >"$work/log" 2>&1 || {
    tail -5 "$work/log" >&2
    exit 1
}
rm -f "$work"/tree/var/cache/apt/archives/*.deb
tar -C "$work/tree" --numeric-owner -cf "$new/systemd-rootfs.tar" .
echo "$suite" >"$new/suite"
echo "$include" >"$new/include"
echo "$systemd_include" >"$new/systemd-include"
rm -rf "$out"
mv "$new" "$out"
echo "debian-mirror.sh: $(ls "$out/debian/pool/main" | wc -l) packages in $out"
