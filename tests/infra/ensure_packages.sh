#!/usr/bin/env bash
# Make sure Debian's Prometheus and Alertmanager binaries are present, for the end-to-end alert
# tests (tests/promstack.py runs them as plain processes on 127.0.0.1; no service is started here).
# On Debian as root: install prometheus and prometheus-alertmanager if either is missing.
# Anywhere else: say what is missing and fail.
set -euo pipefail

prometheus=/usr/bin/prometheus
alertmanager=/usr/bin/prometheus-alertmanager # Debian's name; there is no `alertmanager`
packages=(prometheus prometheus-alertmanager)

if [ -x "$prometheus" ] && [ -x "$alertmanager" ]; then
    echo "ensure_prometheus: already installed ($("$prometheus" --version 2>&1 | head -n 1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: missing $prometheus or $alertmanager; install them" \
        "(Debian: apt-get install --no-install-recommends ${packages[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
install_packages() {
    apt-get install -y -q --no-install-recommends "${packages[@]}" >/tmp/uici-apt-prometheus.log 2>&1
}

# Refresh the package lists only when there are none, or when installing from them fails.
updated=no
if ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then
    apt-get update -q >/dev/null
    updated=yes
fi
if ! install_packages; then
    if [ "$updated" = yes ]; then
        echo "ensure_prometheus: apt-get install ${packages[*]} failed; it ended with:" >&2
        tail -n 20 /tmp/uici-apt-prometheus.log >&2 || true
        exit 1
    fi
    apt-get update -q >/dev/null
    updated=yes
    if ! install_packages; then
        echo "ensure_prometheus: apt-get install ${packages[*]} failed after apt-get update;" \
            "it ended with:" >&2
        tail -n 20 /tmp/uici-apt-prometheus.log >&2 || true
        exit 1
    fi
fi

# The packages try to start their services; without systemd nothing starts, which is what we want.
if [ ! -x "$prometheus" ] || [ ! -x "$alertmanager" ]; then
    echo "ensure_prometheus: installed ${packages[*]} but $prometheus or $alertmanager is" \
        "still missing" >&2
    exit 1
fi
echo "ensure_prometheus: installed ${packages[*]} (apt-get update: $updated;" \
    "$("$prometheus" --version 2>&1 | head -n 1))"
