#!/usr/bin/env bash
# Make sure Grafana's LogQL grammar (@grafana/lezer-logql, pinned in tests/logql/package.json
# and package-lock.json) is installed in tests/logql/node_modules, where tests/logql/check.mjs
# and tests/test_logql_grammar.py use it. Idempotent: `npm ci` runs only when node_modules is
# missing or older than the lockfile. Needs node (>= 20) and npm; fails saying so without them.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../logql" && pwd)"
installed="$dir/node_modules/.package-lock.json" # npm writes it on every install
# The package's exports hide its package.json from require(): read the file.
version() {
    node -e "const f = process.argv[1] + '/node_modules/@grafana/lezer-logql/package.json';
console.log('@grafana/lezer-logql ' + JSON.parse(require('fs').readFileSync(f, 'utf8')).version)" "$dir"
}

# A fresh Debian machine (CI, as root): install Node.js and npm from Debian when missing.
if { ! command -v node || ! command -v npm; } >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] &&
    command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends nodejs npm >/tmp/uici-apt-node.log 2>&1 ||
        { apt-get update -q >>/tmp/uici-apt-node.log 2>&1 &&
            apt-get install -y -q --no-install-recommends nodejs npm >>/tmp/uici-apt-node.log 2>&1; } ||
        true
fi

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ensure_logql: '$tool' is not installed; the LogQL grammar check needs Node.js >= 20" \
            "and npm (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

if [ -f "$installed" ] && [ -f "$dir/node_modules/@grafana/lezer-logql/package.json" ] &&
    [ ! "$dir/package-lock.json" -nt "$installed" ]; then
    echo "ensure_logql: already installed ($(version))"
    exit 0
fi

log=/tmp/uici-npm-logql.log
if ! (cd "$dir" && npm ci --no-audit --no-fund >"$log" 2>&1); then
    echo "ensure_logql: npm ci in $dir failed; it ended with:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
fi
echo "ensure_logql: installed $(version) (node $(node --version))"
