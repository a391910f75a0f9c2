# Sourced, not run: a private apt configuration for one Debian suite.
#
#   source scripts/lib/apt-suite.sh
#   apt_suite_opts SUITE WORKDIR   # fills the array apt_opts
#   apt-get "${apt_opts[@]}" download PKG
#
# The suite's archive is the Debian archive of the machine's own apt entries
# (its URI and keyring, deb822 or one-line form), so no mirror host name is
# written anywhere. Sources list, package lists and cache all live under
# WORKDIR: nothing is added to the machine's apt sources and its package state
# is not read (Dir::State::status=/dev/null), so nothing else on the machine can
# be upgraded from that suite. This is stricter than an extra source with a low
# pin. The package lists are fetched once here (apt-get update).

apt_suite_opts() {
    local suite=$1 work=$2 uri="" keyring=""
    # deb822 (*.sources): the first stanza whose URI ends in /debian.
    read -r uri keyring < <(
        awk '/^URIs:/ { u = $2 } /^Signed-By:/ { k = $2 }
             /^$/ { if (u ~ /debian\/?$/) { print u, k; exit } u = ""; k = "" }
             END { if (u ~ /debian\/?$/) print u, k }' /etc/apt/sources.list.d/*.sources 2>/dev/null
    ) || true
    if [[ -z $uri ]]; then
        # One-line form: `deb [opts] URI SUITE main`.
        uri=$(awk '$1 == "deb" && $NF == "main" { for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list 2>/dev/null) || true
    fi
    if [[ -z $uri ]]; then
        echo "apt-suite: no Debian archive among the machine's apt sources" >&2
        return 1
    fi
    keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
    echo "deb [signed-by=$keyring] $uri $suite main" >"$work/apt/sources.list"
    # APT::Sandbox::User=root: _apt cannot write into a root-only temp dir; the
    # downloads are verified against the keyring all the same.
    apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
        -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
}
