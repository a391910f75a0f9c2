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
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$triple" >&2
echo "$repo/target/$triple/release/netattach"
