#!/usr/bin/env bash
# The two databases of the Compose stack, created by the postgres image on its first start (an
# empty data volume), from /docker-entrypoint-initdb.d/:
#   uici     owned by user uici     (UICI's store: UICI_STORAGE_URL; UICI migrates its schema)
#   prefect  owned by user prefect  (the Prefect server: PREFECT_SERVER_DATABASE_CONNECTION_URL)
# Neither user may connect to the other's database. The passwords come from the container's
# environment (UICI_DB_PASSWORD, PREFECT_DB_PASSWORD; .env) and reach SQL as psql variables,
# quoted by psql (:'name'), never spliced into the statement text.
# tests/test_compose.py runs this script against a real PostgreSQL.
set -euo pipefail

: "${UICI_DB_PASSWORD:?UICI_DB_PASSWORD is not set}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-postgres}" \
    -v uici_password="$UICI_DB_PASSWORD" -v prefect_password="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE uici LOGIN PASSWORD :'uici_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE uici OWNER uici;
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE uici FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE uici TO uici;
GRANT CONNECT, TEMPORARY ON DATABASE prefect TO prefect;
SQL
echo "init-databases: created databases uici and prefect, each with its own user"
