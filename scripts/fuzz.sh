#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one
# after the other, each as a single libFuzzer process at nice 10.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (cargo-fuzz is installed from crates.io when
# missing). The corpus grown while fuzzing goes to $FUZZ_CORPUS_DIR/<target>
# (default /tmp/fuzzcorpus), seeded from the committed fuzz/corpus/<target>;
# logs go next to it as <target>.log. A crash, hang or OOM leaves its
# reproducer in fuzz/artifacts/<target>/ and makes the script fail (after the
# other targets have run).
#
# The build goes to $FUZZ_TARGET_DIR (default /var/cache/netattach/fuzz-target),
# outside the checkout, so that a fresh clone (CI) rebuilds only netattach and
# the targets, not the dependencies. The cargo-fuzz flags are $CARGO_FUZZ_FLAGS,
# by default "-s none": no sanitizer, as the netattach code under test is safe
# Rust (bounds, overflow and debug assertions stay on in cargo-fuzz's release
# build), which runs the NRI targets several times faster.
# CARGO_FUZZ_FLAGS="-s address" brings AddressSanitizer back (a different
# build: the first one in the same target dir is a full rebuild).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

seconds=${1:-60}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [SECONDS]  (a positive whole number)"
work=${FUZZ_CORPUS_DIR:-/tmp/fuzzcorpus}
target_dir=${FUZZ_TARGET_DIR:-/var/cache/netattach/fuzz-target}
read -r -a fuzz_flags <<<"${CARGO_FUZZ_FLAGS--s none}"
mkdir -p "$target_dir"
fuzz_flags+=(--target-dir "$target_dir")

find_cargo
cargo +nightly --version >/dev/null 2>&1 ||
    die "the nightly toolchain is missing: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd "$root/fuzz"
mapfile -t targets < <(cargo +nightly fuzz list)
[[ ${#targets[@]} -gt 0 ]] || die "no fuzz targets in $root/fuzz"

step "building ${#targets[@]} fuzz targets in $target_dir"
build_start=$SECONDS
nice -n 10 cargo +nightly fuzz build "${fuzz_flags[@]}"
echo "built in $((SECONDS - build_start))s"

# netattach lies outside the fuzz workspace, so each checkout path builds it
# and the targets under hashes of its own (about 330 MB a path): drop those of
# other checkouts, that is the target binaries other than the ones release/
# links to, and netattach libraries not rebuilt for a week (cargo rebuilds a
# missing one, so a wrong guess costs a rebuild, not a failure).
out=$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release
for t in "${targets[@]}"; do
    [[ -f $out/$t ]] || continue
    find "$out/deps" -maxdepth 1 -type f -name "$t-*" ! -name '*.d' ! -samefile "$out/$t" -delete
done
find "$out/deps" -maxdepth 1 -type f -name 'libnetattach-*' -mtime +7 -delete

mkdir -p "$work"
summary=()
failed=0
for t in "${targets[@]}"; do
    step "fuzzing $t for ${seconds}s"
    corpus=$work/$t
    mkdir -p "$corpus"
    log=$work/$t.log
    start=$SECONDS
    rc=0
    # New inputs are written to the first corpus dir only; the committed seeds
    # are read from the second and never changed.
    nice -n 10 cargo +nightly fuzz run "${fuzz_flags[@]}" "$t" "$corpus" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    took=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) .*/cov \1 ft \2/p' <<<"$last")
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    if [[ $rc -eq 0 ]]; then
        status=ok
    else
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        status="FAILED (exit $rc${artifact:+, reproducer $artifact}; see $log)"
        tail -n 30 "$log" >&2
    fi
    summary+=("$(printf '%-12s %s: %s execs in %ss, corpus %s files %s bytes, %s' \
        "$t" "$status" "${execs:-?}" "$took" "$files" "$bytes" "${cov:-cov ?}")")
done

step "summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
