#!/usr/bin/env bash
# Builds the test VM's initramfs: busybox, iproute2's ip, util-linux's nsenter,
# iputils' ping (each with the shared libraries ldd names), the kernel modules
# from scripts/vm/kernel.sh, the netattach binary and the test binaries.
#
#   initramfs.sh OUT.gz NETATTACH_BIN PLAN [EXTRA...]
#
# PLAN is a file of lines `NAME PATH ARGS...`: /init runs each test binary
# PATH with ARGS in that order, between console markers
#   @@NAVM begin NAME
#   @@NAVM end NAME rc=N
# and powers off. netattach and the EXTRA files (programs like runc, scripts
# the tests call) are placed at their own absolute paths, because the test
# binaries have those paths compiled in or look them up on PATH.
set -euo pipefail

out=$1 netattach=$2 plan=$3
shift 3
# The kernel's folder (scripts/vm/kernel.sh): its modules go in.
kdir=${NETATTACH_VM_DIR:-/var/cache/netattach/vm}
[[ -s $kdir/modules.order ]] || { echo "no VM kernel in $kdir: run scripts/vm/kernel.sh" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,t}

# A binary and every library it links, at the same paths as on this host.
copy_with_libs() {
    local file=$1 dest=${2:-$1} lib
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$file" "$root$dest"
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' || true); do
        if [[ ! -e $root$lib ]]; then
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        fi
    done
}

cp /bin/busybox "$root/bin/busybox"
for applet in sh mount umount mkdir cat echo sleep poweroff insmod timeout ls dmesg \
    switch_root cp chmod ln head grep printf rm tar rmmod lsmod; do
    ln -s busybox "$root/bin/$applet"
done
ln -s /bin/busybox "$root/usr/bin/env"
copy_with_libs "$(command -v ip)" /usr/sbin/ip
copy_with_libs "$(command -v nsenter)" /usr/bin/nsenter
# unshare --uts=FILE: tests/netns_identity.rs pins namespaces with it.
copy_with_libs "$(command -v unshare)" /usr/bin/unshare
copy_with_libs "$(command -v ping)" /usr/bin/ping
# kmod's modprobe: the kernel calls it to load ipvlan or 8021q on demand.
copy_with_libs "$(command -v modprobe || echo /usr/sbin/modprobe)" /sbin/modprobe
# busybox-static has no `install` (scripts/make-rootfs.sh uses it).
copy_with_libs "$(command -v install)" /usr/bin/install
[[ -d /etc/iproute2 ]] && cp -r /etc/iproute2 "$root/etc/"
[[ -d /usr/share/iproute2 ]] && mkdir -p "$root/usr/share" && cp -r /usr/share/iproute2 "$root/usr/share/"
copy_with_libs "$netattach" "$(realpath "$netattach")"
for extra in "$@"; do
    copy_with_libs "$extra"
done

cp -r "$kdir/lib" "$root/"
cp "$kdir/modules.order" "$root/modules.order"

: >"$root/t/plan"
while read -r name path args; do
    [[ -n $name ]] || continue
    copy_with_libs "$path" "/t/$name"
    echo "$name /t/$name $args" >>"$root/t/plan"
done <"$plan"

cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# runc needs pivot_root, which the initramfs root (rootfs) cannot do: move
# everything to a tmpfs first and start over from there.
if [ -z "$NAVM_ON_TMPFS" ]; then
    mkdir /newroot
    mount -t tmpfs -o size=90% tmpfs /newroot
    for d in /*; do
        [ "$d" = /newroot ] || cp -a "$d" /newroot/
    done
    export NAVM_ON_TMPFS=1
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
# /tmp is already on the tmpfs root, and may hold the test binaries (a
# checkout under /tmp keeps its host path here): no mount over it.
chmod 1777 /tmp
mkdir -p /run/netns
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /var && ln -s /run /var/run
# Only panics and errors from the kernel on the console between test lines.
echo 1 >/proc/sys/kernel/printk
while read -r ko; do
    insmod "$ko" || echo "@@NAVM insmod failed: $ko"
done </modules.order
ip link set lo up
echo "@@NAVM kernel $(cat /proc/sys/kernel/osrelease)"
while read -r name path args; do
    echo "@@NAVM begin $name"
    # shellcheck disable=SC2086
    RUST_BACKTRACE=1 NETATTACH_TESTS_STRICT=1 "$path" $args </dev/null 2>&1
    echo "@@NAVM end $name rc=$?"
done </t/plan
echo "@@NAVM done"
poweroff -f
INIT
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$out"
