#!/usr/bin/env bash
# The real services the distributed tests use, on this machine (all on 127.0.0.1):
#   - PostgreSQL: a shared Optuna study for `dapt tune`;
#   - a Slurm cluster of two emulated nodes (dapt-node1 and dapt-node2: two slurmd on this host) with munge,
#     slurmctld, and slurmdbd on MariaDB for accounting (`sacct`, which submitit reads to see that a job died):
#     Slurm sweeps and two-node DDP.
#   bash scripts/services.sh start    # start them (installs what is missing; needs root), print the environment
#   bash scripts/services.sh stop     # stop them (also after a failed run)
#   bash scripts/services.sh env      # the variables the tests read (DAPT_TEST_POSTGRES=URL, SLURM_CONF=FILE)
# `make services` / `make test-distributed` wrap it; .ci/run starts them before the tests and stops them after.
set -euo pipefail

STATE=${DAPT_SERVICES_DIR:-/tmp/dapt-services}
PG_PORT=${DAPT_PG_PORT:-55432}
PG_DATA=$STATE/postgres
PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/postgres"
SLURM_DIR=$STATE/slurm
SLURM_PORT=${DAPT_SLURM_PORT:-56817} # slurmctld; slurmd, slurmdbd and the nodes take the next four ports
DB_DIR=$STATE/mariadb
DB_PORT=${DAPT_DB_PORT:-53306}
NODES=(dapt-node1 dapt-node2)

say() { echo "[services] $*" >&2; }

# PostgreSQL ----------------------------------------------------------------------------------------------------

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
    touch "$STATE/postgres.log" && chown postgres: "$STATE/postgres.log" # written by the server's own user
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

# Slurm ---------------------------------------------------------------------------------------------------------

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then
        return
    fi
    say "Slurm is not installed: installing munge, Slurm and MariaDB (apt-get install)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for WHAT COMMAND...: up to 15 s for COMMAND to succeed, else show the logs and stop
    local what=$1
    shift
    for _ in $(seq 75); do
        if "$@" >/dev/null 2>&1; then
            return
        fi
        sleep 0.2
    done
    say "$what did not answer; the logs are in $SLURM_DIR and $DB_DIR"
    tail -n 5 "$SLURM_DIR"/*.log "$DB_DIR/mariadb.log" >&2 2>/dev/null || true
    exit 1
}

start_munge() {
    mkdir -p /run/munge && chown munge: /run/munge
    [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    running /run/munge/munged.pid || runuser -u munge -- munged </dev/null >/dev/null 2>&1
    wait_for munge munge --no-input
}

start_mariadb() {
    if [ ! -d "$DB_DIR/mysql" ]; then
        rm -rf "$DB_DIR" && mkdir -p "$DB_DIR" && chown mysql: "$DB_DIR"
        mariadb-install-db --user=mysql --datadir="$DB_DIR" --skip-test-db >/dev/null 2>&1
    fi
    if ! running "$DB_DIR/mariadb.pid"; then
        # Socket, pid file and log in the data folder: the server runs as mysql, which owns only that folder.
        setsid mariadbd --user=mysql --datadir="$DB_DIR" --socket="$DB_DIR/mysqld.sock" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DB_DIR/mariadb.pid" \
            --log-error="$DB_DIR/mariadb.log" </dev/null >/dev/null 2>&1 &
    fi
    wait_for MariaDB mariadb-admin --socket="$DB_DIR/mysqld.sock" --user=root ping
    mariadb --socket="$DB_DIR/mysqld.sock" --user=root --execute="CREATE USER IF NOT EXISTS \
        'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_slurm_configs() {
    local cpus memory host
    mkdir -p "$SLURM_DIR/state"
    host=$(hostname)
    cpus=$(nproc)
    # Both emulated nodes are this machine: each has all its CPUs (slurmd checks them) and half its memory.
    memory=$(($(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') / 2))
    cat >"$SLURM_DIR/slurm.conf" <<CONF
# Written by scripts/services.sh: a test cluster of two emulated nodes on one machine.
ClusterName=dapt
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURM_PORT
SlurmdPort=$((SLURM_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((SLURM_PORT + 2))
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool-%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd-%n.log
KillWait=5
MailProg=/bin/true
ReturnToService=2
NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURM_PORT + 3)) CPUs=$cpus RealMemory=$memory
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURM_PORT + 4)) CPUs=$cpus RealMemory=$memory
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$SLURM_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$((SLURM_PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$SLURM_DIR/slurmdbd.pid
LogFile=$SLURM_DIR/slurmdbd.log
CONF
    chmod 600 "$SLURM_DIR/slurmdbd.conf" # slurmdbd refuses a config others can read (it holds a password)
}

add_node_names() {
    # Jobs (and Lightning's SLURM environment, for the main address) reach a node by name: both are this machine.
    if ! grep -q "# dapt services" /etc/hosts; then
        echo "127.0.0.1 ${NODES[*]}  # dapt services" >>/etc/hosts
    fi
}

all_nodes_idle() { [ "$(sinfo --noheader --format=%t | sort -u)" = idle ]; }

start_slurm() {
    install_slurm
    start_munge
    start_mariadb
    write_slurm_configs
    add_node_names
    export SLURM_CONF=$SLURM_DIR/slurm.conf # slurmdbd reads slurmdbd.conf from the same folder
    running "$SLURM_DIR/slurmdbd.pid" || slurmdbd </dev/null >/dev/null 2>&1
    wait_for slurmdbd sacctmgr --noheader list cluster
    if [ -z "$(sacctmgr --noheader --parsable2 list cluster format=cluster)" ]; then
        sacctmgr --immediate add cluster dapt >/dev/null
    fi
    # -c: a fresh controller state at each start (no jobs left over from an earlier test run).
    running "$SLURM_DIR/slurmctld.pid" || slurmctld -c -f "$SLURM_CONF" </dev/null >/dev/null 2>&1
    for node in "${NODES[@]}"; do
        running "$SLURM_DIR/slurmd-$node.pid" || slurmd -f "$SLURM_CONF" -N "$node" </dev/null >/dev/null 2>&1
    done
    wait_for "the Slurm nodes" all_nodes_idle
    say "Slurm up: nodes ${NODES[*]} in partition debug, accounting in MariaDB ($SLURM_CONF)"
}

stop_pid() { # stop_pid NAME PIDFILE: SIGTERM, then wait up to 10 s for it to end
    if running "$2"; then
        local pid
        pid=$(cat "$2")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        say "$1 stopped"
    fi
}

stop_slurm() {
    for node in "${NODES[@]}"; do
        stop_pid "slurmd $node" "$SLURM_DIR/slurmd-$node.pid"
    done
    stop_pid slurmctld "$SLURM_DIR/slurmctld.pid"
    stop_pid slurmdbd "$SLURM_DIR/slurmdbd.pid"
    stop_pid MariaDB "$DB_DIR/mariadb.pid"
    stop_pid munge /run/munge/munged.pid
}

# ---------------------------------------------------------------------------------------------------------------

print_env() {
    echo "export DAPT_TEST_POSTGRES=$PG_URL"
    echo "export SLURM_CONF=$SLURM_DIR/slurm.conf"
}

case "${1:-}" in
    start)
        if [ "$(id -u)" != 0 ]; then
            say "starting the services needs root (they run as their own users); the service tests will skip"
            exit 1
        fi
        start_postgres
        start_slurm
        print_env
        ;;
    stop)
        stop_slurm
        stop_postgres
        ;;
    env) print_env ;;
    *)
        echo "usage: $0 start|stop|env" >&2
        exit 2
        ;;
esac
