#!/usr/bin/env bash
# The real services the distributed tests use, on this machine: PostgreSQL on 127.0.0.1 (a shared Optuna study).
#   bash scripts/services.sh start    # start them (installs what is missing; needs root), print the environment
#   bash scripts/services.sh stop     # stop them (also after a failed run)
#   bash scripts/services.sh env      # the variables the tests read (DAPT_TEST_POSTGRES=URL)
# `make services` / `make test-distributed` wrap it; .ci/run starts them before the tests and stops them after.
set -euo pipefail

STATE=${DAPT_SERVICES_DIR:-/tmp/dapt-services}
PG_PORT=${DAPT_PG_PORT:-55432}
PG_DATA=$STATE/postgres
PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/postgres"

say() { echo "[services] $*" >&2; }

pg_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$found" ]; then
        say "PostgreSQL is not installed: installing it (apt-get install postgresql)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    echo "$found"
}

start_postgres() {
    local bin
    bin=$(pg_bin)
    mkdir -p "$STATE"
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
        rm -rf "$PG_DATA" && mkdir -p "$PG_DATA" && chown postgres: "$PG_DATA"
        # initdb and pg_ctl refuse to run as root: they run as the postgres user.
        runuser -u postgres -- "$bin/initdb" -D "$PG_DATA" --auth=trust -U postgres >/dev/null
    fi
    if runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
        return
    fi
    touch "$STATE/postgres.log" && chown postgres: "$STATE/postgres.log"  # written by the server's own user
    # fsync off: a test database, thrown away afterwards.
    runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DATA" -l "$STATE/postgres.log" -w -t 30 start \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DATA -c fsync=off" >/dev/null
    for _ in $(seq 50); do
        if runuser -u postgres -- "$bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
            say "PostgreSQL up on 127.0.0.1:$PG_PORT ($PG_DATA)"
            return
        fi
        sleep 0.2
    done
    say "PostgreSQL did not answer on 127.0.0.1:$PG_PORT; its log: $STATE/postgres.log"
    tail -20 "$STATE/postgres.log" >&2
    exit 1
}

stop_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$bin" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        say "PostgreSQL stopped"
    fi
}

print_env() {
    echo "export DAPT_TEST_POSTGRES=$PG_URL"
}

case "${1:-}" in
    start)
        if [ "$(id -u)" != 0 ]; then
            say "starting the services needs root (they run as their own users); the service tests will skip"
            exit 1
        fi
        start_postgres
        print_env
        ;;
    stop) stop_postgres ;;
    env) print_env ;;
    *)
        echo "usage: $0 start|stop|env" >&2
        exit 2
        ;;
esac
