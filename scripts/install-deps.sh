#!/usr/bin/env bash
# Install what the tests and the demo need on Debian 12 (bookworm). Idempotent.
# Run as root. Rust itself (cargo, rustfmt, clippy) is expected from rustup.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: run as root (sudo $0)" >&2
    exit 1
fi

packages=(
    iproute2           # ip: the tests build fake LANs in network namespaces
    util-linux         # nsenter, unshare, mountpoint
    iputils-ping       # ping from test namespaces
    iputils-arping     # arping: the address-safety tests count ARP answers on the wire
    jq                 # scripts/demo.sh edits config.json
    runc               # OCI runtime under test
    crun               # OCI runtime under test
    podman             # hooks.d face (pulls conmon)
    netavark           # podman's network backend; a peer for benchmarks
    busybox-static     # the containers' root filesystem
    containernetworking-plugins  # CNI reference plugins (peers for benchmarks)
    ca-certificates
    build-essential    # cc for the bundled sqlite
    pkg-config
    qemu-system-x86    # the test VM: ipvlan and 802.1Q need a kernel with them
    cpio               # the VM's initramfs
    kmod               # depmod/modprobe to order the VM kernel's modules
    python3            # benchmarks; a foreign SQLite writer in the fault tests
    dnsmasq-base       # a real DHCP server in the fake LAN for --ipam dhcp (tests/dhcp.rs)
    etcd-server        # etcd 3.4: tests/etcd_client.rs starts its own on free ports (the packaged service is not used)
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all packages present"
else
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "install-deps: done"
fi
# The tests start their own etcd on free ports; Debian's package enables a
# service on the default port, which nothing here wants running.
if [[ -d /run/systemd/system ]] && systemctl is-enabled --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# Debian's kernels for the test VM (tests/vm.rs), fetched once, not installed:
# the machine's own release's, and Debian 11's 5.10 (no SO_NETNS_COOKIE).
"$(dirname "$0")/vm/kernel.sh"
"$(dirname "$0")/vm/kernel.sh" bullseye
# containerd 1.7 with NRI (Debian 13's; bookworm's 1.6 has none) for the tests
# that drive a real containerd (tests/real_containerd/), fetched once, not installed.
"$(dirname "$0")/containerd.sh"
