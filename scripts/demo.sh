#!/usr/bin/env bash
# Demo, as root on a fresh Debian 12: a busybox container under runc gets its
# own MAC and address on a (fake) LAN through the netattach OCI hook, and
# pings the LAN's gateway. Touches none of the host's interfaces: the LAN is
# a veth pair between two network namespaces made for the demo, and all is
# removed at exit, also on failure.
#
#   sudo scripts/demo.sh            # NETATTACH_BIN=path to skip the build
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
require_root

id=nademo-$$
host_ns=$id-h      # "the host": holds lan0, the macvlan parent; runc runs here
lan_ns=$id-x       # "the LAN": holds the gateway 192.168.32.254
gw=192.168.32.254
work=$(mktemp -d "/tmp/$id.XXXXXX")
conf=$work/config
state=$work/state
bundle=$work/bundle
runc_root=$work/runc

cleanup() {
    local rc=$?
    set +e
    step "Cleaning up"
    if [[ -d $runc_root ]]; then
        nsenter --net="/run/netns/$host_ns" runc --root "$runc_root" delete -f "$id" >/dev/null 2>&1
    fi
    ip netns del "$host_ns" 2>/dev/null
    ip netns del "$lan_ns" 2>/dev/null
    rm -rf "$work"
    if [[ $rc -eq 0 ]]; then
        echo "demo: OK"
    else
        echo "demo: FAILED (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_host() { nsenter --net="/run/netns/$host_ns" "$@"; }

step "1. Installing dependencies (apt)"
"$repo/scripts/install-deps.sh"

step "2. Building netattach"
if [[ -n ${NETATTACH_BIN:-} ]]; then
    bin=$(readlink -f "$NETATTACH_BIN")
else
    bin=$("$repo/scripts/build.sh")
fi
echo "binary: $bin"
na() { in_host "$bin" --config-dir "$conf" --state-dir "$state" "$@"; }

step "3. Building a fake LAN: netns $host_ns (lan0) <-veth-> netns $lan_ns (gateway $gw)"
ip netns add "$host_ns"
ip netns add "$lan_ns"
ip -n "$host_ns" link add lan0 type veth peer name gw0 netns "$lan_ns"
ip -n "$lan_ns" addr add "$gw/24" dev gw0
ip -n "$lan_ns" addr add 2001:db8:32::fe/64 dev gw0 nodad
ip -n "$lan_ns" link set gw0 up
ip -n "$lan_ns" link set lo up
ip -n "$host_ns" link set lan0 up
ip -n "$host_ns" link set lo up

step "4. Defining the network: netattach network create -d macvlan ... -o parent=lan0 lan"
na network create -d macvlan --subnet 192.168.32.0/24 --gateway "$gw" -o parent=lan0 lan
na network ls

step "5. Preparing a busybox bundle with the hook and the annotation netattach/networks=lan"
"$repo/scripts/make-rootfs.sh" "$bundle/rootfs"
runc spec --bundle "$bundle"
hook_env=$(jq -nc --arg c "$conf" --arg s "$state" '["NETATTACH_CONFIG_DIR=" + $c, "NETATTACH_STATE_DIR=" + $s]')
jq --arg bin "$bin" --argjson env "$hook_env" --arg gw "$gw" '
    .process.terminal = false
  | .process.args = ["sh", "-c",
        "echo \"--- inside the container:\"; ip addr show eth0; ip route; ping -c 2 -W 2 " + $gw
        + " && echo PING-OK || echo PING-FAILED; echo DEMO-READY; exec sleep 3600"]
  | .process.capabilities |= with_entries(if .key == "ambient" then . else .value += ["CAP_NET_RAW"] end)
  | .hostname = "demo"
  | .annotations = {"netattach/networks": "lan"}
  | .hooks = {
      "createRuntime": [{"path": $bin, "args": ["netattach", "hook", "attach"], "env": $env}],
      "poststop":      [{"path": $bin, "args": ["netattach", "hook", "release"], "env": $env}]
    }' "$bundle/config.json" >"$bundle/config.json.new"
mv "$bundle/config.json.new" "$bundle/config.json"
jq '{annotations, hooks}' "$bundle/config.json"

step "6. Starting the container: runc run -d $id (in netns $host_ns)"
in_host runc --root "$runc_root" run -d --bundle "$bundle" "$id" >"$work/container.log" 2>&1 </dev/null
for _ in $(seq 100); do
    grep -q DEMO-READY "$work/container.log" && break
    sleep 0.1
done
cat "$work/container.log"
grep -q PING-OK "$work/container.log" || die "the container could not ping the gateway"

step "7. Leases while it runs: netattach lease ls"
na lease ls
addr=$(na lease ls --json | jq -r '.[0].address')
echo "--- from the LAN side: ping $addr"
ip netns exec "$lan_ns" ping -c 1 -W 2 "$addr"

step "8. Deleting the container: runc delete -f (the poststop hook releases the lease)"
in_host runc --root "$runc_root" delete -f "$id"
echo "--- leases now:"
na lease ls
[[ $(na lease ls --json | jq length) -eq 0 ]] || die "a lease survived the container"
