# Shared helpers for scripts/*.sh (sourced, not run).

# A visible step line.
step() {
    printf '\n\033[1m==> %s\033[0m\n' "$*"
}

die() {
    echo "error: $*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root: sudo $0"
}

# Makes `cargo` callable. Under sudo, root's PATH usually lacks ~/.cargo/bin:
# look in root's home, then in the invoking user's rustup install.
find_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    if [[ -x $HOME/.cargo/bin/cargo ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return 0
    fi
    if [[ -n ${SUDO_USER:-} ]]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
            export PATH="$home/.cargo/bin:$PATH"
            export CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
            export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
            return 0
        fi
    fi
    die "cargo not found; install Rust (stable, >= 1.85, as Cargo.toml says) with rustup: https://rustup.rs"
}
