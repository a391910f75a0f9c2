#!/usr/bin/env bash
# Builds the release binary as one static executable (glibc linked in, no
# dynamic loader at start-up), for copying to any x86_64 Linux host.
# Prints the binary's path.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
find_cargo
cd "$repo"
triple=$(rustc -vV | sed -n 's/^host: //p')
# With an explicit --target, RUSTFLAGS reach only the target's artifacts, not
# build scripts and proc macros (which cannot be static).
# relocation-model=static links a fixed-address executable instead of a
# static PIE: a static PIE relocates itself (some 17,000 pointers) at every
# start, which costs a hook ~0.22 ms per container start (BENCHMARKS.md). The
# price is no address randomization of the executable's own code and data
# (its stack, heap and mappings are still randomized); Debian's CNI plugins
# are fixed-address executables too.
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --quiet --target "$triple" >&2
echo "$repo/target/$triple/release/netattach"
