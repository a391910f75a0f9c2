#!/usr/bin/env bash
# Fetches containerd 1.7 (with NRI) for the tests that drive a real containerd
# (tests/real_containerd/), without installing it: Debian 12 ships containerd
# 1.6, which has no NRI, so the binaries come from Debian 13 (trixie), whose
# containerd links only libc and runs on bookworm as it is.
#
#   scripts/containerd.sh
#
# Into $NETATTACH_CONTAINERD_DIR (default /var/cache/netattach/containerd)/:
#     bin/containerd, bin/ctr, bin/containerd-shim-runc-v2
#     VERSION        the Debian package version, e.g. 1.7.24~ds1-6+deb13u1
# runc comes from the machine's own release (scripts/install-deps.sh), the CNI
# plugins from containernetworking-plugins (/usr/lib/cni).
#
# The package is fetched with `apt-get download` through a private apt
# configuration for trixie alone (scripts/lib/apt-suite.sh): nothing is added to
# the machine's apt sources at all, so no package of the machine can move to
# trixie's version, and `dpkg-deb -x` unpacks it without installing it.
# Idempotent: does nothing when the binaries are already there. Run as root.
set -euo pipefail

suite=trixie
dir=${NETATTACH_CONTAINERD_DIR:-/var/cache/netattach/containerd}
wanted=(containerd ctr containerd-shim-runc-v2)

have_all=1
for b in "${wanted[@]}"; do
    [[ -x $dir/bin/$b ]] || have_all=0
done
if [[ $have_all -eq 1 && -s $dir/VERSION ]]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck source=lib/apt-suite.sh
source "$(dirname "$0")/lib/apt-suite.sh"
apt_suite_opts "$suite" "$work"

(cd "$work" && apt-get "${apt_opts[@]}" download -q containerd >/dev/null)
deb=$(echo "$work"/containerd_*.deb)
[[ -f $deb ]] || { echo "containerd: apt-get download containerd ($suite) gave no package" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
dpkg-deb -x "$deb" "$work/root"

rm -rf "$dir.new"
mkdir -p "$dir.new/bin"
for b in "${wanted[@]}"; do
    install -m 0755 "$work/root/usr/bin/$b" "$dir.new/bin/$b"
done
echo "$version" >"$dir.new/VERSION"
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "containerd: $version in $dir ($("$dir/bin/containerd" --version))"
