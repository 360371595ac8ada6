#!/usr/bin/env bash
# Builds the small, signed Debian mirror that the debootstrap test imports from:
# the packages of a minbase bookworm (plus netbase), a Packages index, a Release
# file signed with a throwaway key, and that key as keyring.gpg. The test serves it
# over HTTP on loopback inside its own network namespace, so the test itself never
# reaches outside the machine; only this set-up step downloads, like apt-get does.
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
upstream=${VECTL_DEBIAN_UPSTREAM:-http://deb.debian.org/debian}

if [ -f "$out/keyring.gpg" ]; then
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
debootstrap --download-only --variant=minbase --include="$include" --arch="$arch" \
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
echo "$suite" >"$new/suite"
echo "$include" >"$new/include"
rm -rf "$out"
mv "$new" "$out"
echo "debian-mirror.sh: $(ls "$out/debian/pool/main" | wc -l) packages in $out"
