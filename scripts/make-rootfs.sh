#!/usr/bin/env bash
# Build a minimal busybox-static root filesystem for runc/crun bundles, and
# optionally import it into a private podman store as localhost/netattach-busybox.
#
#   scripts/make-rootfs.sh DIR                 # rootfs in DIR
#   scripts/make-rootfs.sh --podman TOP DIR    # rootfs in DIR, plus podman config and
#                                              # storage under TOP (TOP/containers.conf,
#                                              # TOP/storage.conf) and the image imported
#
# The rootfs holds bin/busybox and applet links (sh, ip, ping, ...), empty
# /proc /sys /dev /tmp and a tiny /etc. Needs busybox-static (scripts/install-deps.sh).
set -euo pipefail

usage() { echo "usage: $0 [--podman TOP] DIR" >&2; exit 2; }

podman_top=""
if [[ "${1:-}" == "--podman" ]]; then
    [[ $# -ge 3 ]] || usage
    podman_top=$2
    shift 2
fi
[[ $# -eq 1 ]] || usage
dir=$1

busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
    # The static build has no ELF interpreter; the dynamic one would need libc in the rootfs.
    # (grep -c reads all its input: no SIGPIPE for head under pipefail)
    if [[ -x $candidate ]] && ! head -c 4096 "$candidate" | grep -ac 'ld-linux' >/dev/null; then
        busybox=$candidate
        break
    fi
done
if [[ -z $busybox ]]; then
    echo "make-rootfs: no static busybox found (apt-get install busybox-static)" >&2
    exit 1
fi

mkdir -p "$dir"/{bin,sbin,etc,proc,sys,dev,tmp,root,run,var}
chmod 1777 "$dir/tmp"
install -m 0755 "$busybox" "$dir/bin/busybox"
for applet in sh ash ip ping ping6 cat sleep true false ifconfig route ls echo \
    grep sed awk ps hostname mount umount ln mkdir rm touch wget nc arp udhcpc env id; do
    ln -sf busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$dir/etc/passwd"
printf 'root:x:0:\n' >"$dir/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$dir/etc/hosts"
: >"$dir/etc/resolv.conf"

if [[ -n $podman_top ]]; then
    mkdir -p "$podman_top"
    podman_top=$(cd "$podman_top" && pwd)
    cat >"$podman_top/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "$podman_top/run"
graphroot = "$podman_top/storage"
CONF
    cat >"$podman_top/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$podman_top/events.log"
tmp_dir = "$podman_top/tmp"
static_dir = "$podman_top/storage/libpod"
volume_path = "$podman_top/storage/volumes"

[network]
network_config_dir = "$podman_top/networks"
CONF
    export CONTAINERS_STORAGE_CONF="$podman_top/storage.conf"
    export CONTAINERS_CONF="$podman_top/containers.conf"
    tar -C "$dir" -cf "$podman_top/rootfs.tar" .
    podman import -q "$podman_top/rootfs.tar" localhost/netattach-busybox >/dev/null
    rm -f "$podman_top/rootfs.tar"
    echo "podman: CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF CONTAINERS_CONF=$CONTAINERS_CONF"
fi
