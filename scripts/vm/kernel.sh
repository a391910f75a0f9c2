#!/usr/bin/env bash
# Fetches Debian's cloud kernel (which has ipvlan and 802.1Q as modules, unlike
# the machine's own kernel) for the test VM, without installing it.
#
#   scripts/vm/kernel.sh [SUITE]
#
# Without SUITE: the kernel of the machine's own Debian release, into
#   $NETATTACH_VM_DIR (default /var/cache/netattach/vm)/
# With SUITE (e.g. bullseye, Debian 11's 5.10, for the old-kernel tests): that
# release's kernel, into $NETATTACH_VM_DIR-SUITE/, fetched through a private
# apt configuration for that suite alone (from the same Debian source as the
# machine's own entries), so the machine's apt setup is not touched.
#
# The layout:
#     vmlinuz        the kernel
#     modules.order  the .ko files to insmod, dependencies first
#     lib/modules/   the modules themselves, with depmod's index so that the
#                    kernel can also load them on demand through modprobe
# Idempotent: does nothing when the kernel is already there. Run as root.
set -euo pipefail

suite=${1:-}
dir=${NETATTACH_VM_DIR:-/var/cache/netattach/vm}${suite:+-$suite}
# The modules the in-VM tests need; their dependencies come from modprobe.
wanted=(8021q macvlan ipvlan veth)

# Bumped when the layout above changes, so that old caches are refetched.
layout=2
if [[ -s $dir/vmlinuz && $(cat "$dir/LAYOUT" 2>/dev/null) == "$layout" ]]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

apt_opts=()
if [[ -n $suite ]]; then
    # shellcheck source=../lib/apt-suite.sh
    source "$(dirname "$0")/../lib/apt-suite.sh"
    apt_suite_opts "$suite" "$work"
fi

# The exact package behind the meta-package, e.g. linux-image-6.1.0-56-cloud-amd64.
package=$(apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [[ -z $package && -z $suite ]]; then
    apt-get update -qq
    package=$(apt-cache depends linux-image-cloud-amd64 |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[[ -n $package ]] || { echo "vm/kernel: no linux-image-cloud-amd64 in apt${suite:+ ($suite)}" >&2; exit 1; }
version=${package#linux-image-}

# _apt cannot write into a root-only temp dir; the download is checked by apt all the same.
(cd "$work" && apt-get "${apt_opts[@]}" download -q -o APT::Sandbox::User=root "$package" >/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
depmod -b "$work/root" "$version"

rm -rf "$dir.new"
mkdir -p "$dir.new/lib/modules/$version"
cp "$work/root/boot/vmlinuz-$version" "$dir.new/vmlinuz"
# `insmod /lib/modules/...` lines in load order, dependencies first.
for module in "${wanted[@]}"; do
    modprobe -d "$work/root" -S "$version" --show-depends "$module"
done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' |
    sed "s|^$work/root||" >"$dir.new/modules.order"
while read -r ko; do
    mkdir -p "$dir.new$(dirname "$ko")"
    cp "$work/root$ko" "$dir.new$ko"
done <"$dir.new/modules.order"
cp "$work/root/lib/modules/$version"/modules.* "$dir.new/lib/modules/$version/"
echo "$version" >"$dir.new/VERSION"
echo "$layout" >"$dir.new/LAYOUT"
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "vm/kernel: $version in $dir"
