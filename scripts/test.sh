#!/usr/bin/env bash
# The test suite, as root on Debian 12: installs the dependencies, then runs
# every test (unit, integration, end to end through runc, crun and podman).
# Extra arguments go to the test binaries, e.g. `scripts/test.sh runc`; with a
# `--`, those before it go to cargo: `scripts/test.sh --test vm -- ipvlan`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
require_root
"$repo/scripts/install-deps.sh"
find_cargo
cd "$repo"

# Missing prerequisites fail the root-only tests instead of skipping them.
export NETATTACH_TESTS_STRICT=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo_args=() test_args=("$@")
for i in $(seq 1 $#); do
    if [[ ${!i} == -- ]]; then
        cargo_args=("${@:1:i-1}") test_args=("${@:i+1}")
        break
    fi
done
cargo test --release "${cargo_args[@]}" -- --test-threads=2 "${test_args[@]}" 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
