#!/usr/bin/env bash
# Make the Compose stack's secrets, once: `make stack` runs this before bringing it up.
#
#   deployments/compose/secrets.sh
#
# 1. .env: copied from .env.example when there is none (mode 600). Every value that is still
#    CHANGE_ME (the PostgreSQL and Grafana passwords) becomes a random 32-digit hex password.
# 2. The API keys of platform.yml api.api_keys: for each of alertmanager (webhook), reader,
#    operator and admin whose hash in .env is empty, a fresh key (the format of `uici keys
#    new`: "uici_" + 32 URL-safe characters, 192 bits) goes to secrets/uici-<name>-key and its
#    SHA-256 to .env. A key file whose hash does not match .env is an error (say which), never
#    overwritten.
# secrets/ is mode 700, so only its owner reads it on the host; the key files in it are 644,
# because the containers read them as other users (Alertmanager as nobody).
# Both .env and secrets/ are git-ignored. Nothing is printed but names and paths.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
umask 077

if [ ! -f .env ]; then
    cp .env.example .env
    chmod 600 .env
    echo "secrets: wrote $here/.env from .env.example"
fi

value() { sed -n "s/^$1=//p" .env | tail -n 1; }
set_value() {
    # The value is hex or URL-safe base64, so it needs no escaping for sed.
    if grep -q "^$1=" .env; then
        sed -i "s|^$1=.*|$1=$2|" .env
    else
        printf '%s=%s\n' "$1" "$2" >>.env
    fi
}
random_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
new_key() { printf 'uici_%s' "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

for name in POSTGRES_PASSWORD UICI_DB_PASSWORD PREFECT_DB_PASSWORD GRAFANA_ADMIN_PASSWORD; do
    if [ "$(value "$name")" = CHANGE_ME ] || [ -z "$(value "$name")" ]; then
        set_value "$name" "$(random_hex)"
        echo "secrets: $name set to a random password in .env"
    fi
done

mkdir -p secrets
chmod 700 secrets
failed=0
# key name in platform.yml : its hash variable : its file
for entry in alertmanager:UICI_WEBHOOK_KEY_SHA256:uici-webhook-key \
    reader:UICI_READER_KEY_SHA256:uici-reader-key \
    operator:UICI_OPERATOR_KEY_SHA256:uici-operator-key \
    admin:UICI_ADMIN_KEY_SHA256:uici-admin-key; do
    IFS=: read -r key_name variable file <<<"$entry"
    hash=$(value "$variable")
    if [ -f "secrets/$file" ]; then
        if [ "$(sha256 "$(cat "secrets/$file")")" != "$hash" ]; then
            echo "secrets: secrets/$file does not match $variable in .env; put its hash there" \
                "(uici keys hash < secrets/$file), or delete the file and empty $variable" >&2
            failed=1
        fi
        continue
    fi
    if [ -n "$hash" ]; then
        echo "secrets: $variable is set but secrets/$file is missing; the stack cannot use" \
            "that key (make drill needs the reader key): empty $variable to make a new one" >&2
        [ "$key_name" = alertmanager ] && failed=1
        continue
    fi
    key=$(new_key)
    printf '%s' "$key" >"secrets/$file"
    chmod 644 "secrets/$file"
    set_value "$variable" "$(sha256 "$key")"
    echo "secrets: new key '$key_name' in secrets/$file, its SHA-256 in .env ($variable)"
done
exit "$failed"
