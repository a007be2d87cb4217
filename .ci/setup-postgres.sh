#!/usr/bin/env bash
# Installs what the PostgreSQL sink tests (tests/test_sinks.py) need: Debian's
# server (initdb/pg_ctl under /usr/lib/postgresql/*/bin, and the "postgres"
# user the tests run them as when they run as root) and psycopg 3.
# The one copy of this logic: tests/conftest.py runs this script by itself
# when it is root and finds no server, then starts and stops its own
# throwaway cluster; no service is started here.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PY="${PYTHON:-python3}"
"$PY" -c "import psycopg" 2>/dev/null || "$PY" -m pip install -q "psycopg[binary]"
