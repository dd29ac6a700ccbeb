#!/usr/bin/env bash
# Make sure the Debian packages the tests and benchmarks run as plain processes are present:
# prometheus and prometheus-alertmanager (the end-to-end alert tests, tests/promstack.py) and
# postgresql (the Prefect server's database with UICI_PREFECT_DB=postgres), and docker-compose
# (the v1 tool, whose `config` validates deployments/compose: tests/test_compose.py). No service is
# started here. On Debian as root: install what is missing. Anywhere else: say what is missing
# and fail.
set -euo pipefail

pg_ctl() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | sort -V | tail -n 1; }
# package -> how to tell it is installed
declare -A present=(
    [prometheus]='[ -x /usr/bin/prometheus ]'
    [prometheus-alertmanager]='[ -x /usr/bin/prometheus-alertmanager ]' # no `alertmanager` name
    [postgresql]='[ -n "$(pg_ctl)" ]'
    [docker-compose]='[ -x /usr/bin/docker-compose ]'
)
missing=()
for package in prometheus prometheus-alertmanager postgresql docker-compose; do
    eval "${present[$package]}" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "ensure_packages: already installed ($(/usr/bin/prometheus --version 2>&1 | head -n 1);" \
        "$("$(pg_ctl)" --version))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_packages: missing ${missing[*]}; install them" \
        "(Debian: apt-get install --no-install-recommends ${missing[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log=/tmp/uici-apt-packages.log
install_packages() {
    apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1
}

# Refresh the package lists only when there are none, or when installing from them fails.
updated=no
if ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then
    apt-get update -q >/dev/null
    updated=yes
fi
if ! install_packages; then
    if [ "$updated" = no ]; then
        apt-get update -q >/dev/null
        updated=yes
    fi
    if [ "$updated" = yes ] && ! install_packages; then
        echo "ensure_packages: apt-get install ${missing[*]} failed; it ended with:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
    fi
fi

# The packages try to start their services; without systemd nothing starts, which is what we want.
for package in "${missing[@]}"; do
    if ! eval "${present[$package]}"; then
        echo "ensure_packages: installed $package but its binaries are still missing" >&2
        exit 1
    fi
done
echo "ensure_packages: installed ${missing[*]} (apt-get update: $updated)"
