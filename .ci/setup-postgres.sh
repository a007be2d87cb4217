#!/usr/bin/env bash
# Installs what tests/test_sinks.py needs to test the PostgreSQL sink for real:
# Debian's server (initdb/pg_ctl under /usr/lib/postgresql/*/bin, and the
# "postgres" user the test runs them as when CI is root) and psycopg 3.
# The test starts and stops its own throwaway cluster; no service is started here.
# Without this script the PostgreSQL tests skip and say why.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
PY="${PYTHON:-python3}"
"$PY" -c "import psycopg" 2>/dev/null || "$PY" -m pip install -q "psycopg[binary]"
