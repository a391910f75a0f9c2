#!/usr/bin/env bash
# IPAM benchmark: netattach's pooled allocation + release at 0 / 50 / 95 % fill of
# a /16 against the CNI host-local plugin (Debian's containernetworking-plugins).
# Builds the release binary, then runs bench/ipam.py (stdlib Python 3), which
# prints a markdown table and writes bench/results/ipam.json.
#
#   bench/ipam.sh            # full run, ~10-15 min on a 2-core machine
#   bench/ipam.sh --smoke    # a /24, 5 ops per level: seconds (CI)
#   bench/ipam.sh --help     # options of bench/ipam.py
#
# NETATTACH_BIN=path skips the build. Needs /usr/lib/cni/host-local
# (apt-get install containernetworking-plugins). No network traffic and no
# network namespaces: everything lives in a private directory under $TMPDIR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [[ -z ${NETATTACH_BIN:-} ]]; then
    # shellcheck source=scripts/lib.sh
    . "$repo/scripts/lib.sh"
    find_cargo
    cargo build --release --quiet --bin netattach
    NETATTACH_BIN=$repo/target/release/netattach
fi
exec python3 "$repo/bench/ipam.py" --netattach "$NETATTACH_BIN" "$@"
