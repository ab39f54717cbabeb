#!/usr/bin/env bash
# Start/stop throwaway Redis and PostgreSQL servers for the test suite.
#
#   scripts/services.sh up   STATE_DIR   start both, print `export ...` lines
#   scripts/services.sh env  STATE_DIR   print the exports of running services
#   scripts/services.sh down STATE_DIR   stop both and delete STATE_DIR
#
# Everything lives in STATE_DIR (data, sockets, logs, pid files), the servers
# listen on free loopback ports only, and nothing touches the system's own
# Redis/PostgreSQL, so several runs (other worktrees, CI) can coexist.
# Diagnostics go to stderr so `eval "$(scripts/services.sh up DIR)"` works.
set -euo pipefail

usage() {
    echo "usage: $0 up|env|down STATE_DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
state=$2

log() { echo "services: $*" >&2; }

# STATE_DIR is deleted by `down`: refuse anything that is not clearly ours.
case $state in
/*/?*) ;;
*)
    log "STATE_DIR must be an absolute path below a top-level directory: '$state'"
    exit 2
    ;;
esac

# A port the kernel just handed out and released; a tiny race with other
# processes remains, which the retry loops below absorb.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Debian installs PostgreSQL outside PATH, one directory per major version.
pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$dir" ] && command -v pg_ctl >/dev/null 2>&1; then
        dir=$(dirname "$(command -v pg_ctl)")
    fi
    if [ -z "$dir" ] || [ ! -x "$dir/pg_ctl" ]; then
        log "PostgreSQL binaries not found (install the 'postgresql' package)"
        return 1
    fi
    echo "$dir"
}

# PostgreSQL refuses to run as root, so as root we run it as the `postgres`
# system user (created by the Debian package); anyone else runs it directly.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Wait until a command succeeds, for at most $1 seconds.
wait_for() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# A daemonized server is reparented to PID 1, which here may reap its children
# only after a while; a zombie has already exited, so it counts as dead.
pid_alive() {
    local pid=${1:-} state
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ]
}
pid_dead() { ! pid_alive "$1"; }

# Stop a process by pid: polite signal first, SIGKILL if it lingers.
stop_pid() {
    local pid=$1
    pid_alive "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    wait_for 15 pid_dead "$pid" || kill -9 "$pid" 2>/dev/null || true
}

start_redis() {
    local dir=$state/redis port attempt
    mkdir -p "$dir"
    for attempt in 1 2 3; do
        port=$(free_port)
        # No persistence: the data is disposable and fsyncs only slow tests.
        if redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
            --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
            --save '' --appendonly no >/dev/null &&
            wait_for 20 redis-cli -h 127.0.0.1 -p "$port" ping; then
            echo "$port" >"$dir/port"
            log "redis ready on 127.0.0.1:$port"
            return 0
        fi
        log "redis failed to start on port $port (attempt $attempt)"
        stop_pid "$(cat "$dir/redis.pid" 2>/dev/null || true)"
    done
    tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
    return 1
}

start_postgres() {
    local bindir dir data port attempt
    bindir=$(pg_bindir)
    dir=$state/pg
    data=$dir/data
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    # trust auth on loopback only; C locale avoids depending on generated locales.
    as_pg "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale \
        --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    for attempt in 1 2 3; do
        port=$(free_port)
        # The socket goes into our own dir so /var/run/postgresql is not needed;
        # durability settings are off because the cluster is thrown away.
        if as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null &&
            wait_for 30 "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
            echo "$port" >"$dir/port"
            "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres thrifty_test
            log "postgres ready on 127.0.0.1:$port (database thrifty_test)"
            return 0
        fi
        log "postgres failed to start on port $port (attempt $attempt)"
        as_pg "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    done
    tail -n 20 "$dir/postgres.log" >&2 2>/dev/null || true
    return 1
}

print_env() {
    local redis_port pg_port chromium repo_root data_dir
    redis_port=$(cat "$state/redis/port")
    pg_port=$(cat "$state/pg/port")
    echo "export THRIFTY_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0"
    echo "export THRIFTY_TEST_POSTGRES_DSN=postgresql://postgres@127.0.0.1:$pg_port/thrifty_test"
    chromium=$(command -v chromium || true)
    if [ -n "$chromium" ]; then
        echo "export THRIFTY_TEST_CHROMIUM=$chromium"
    fi
    # shared/ sits beside the repository (in CI beside the fresh clone).
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -d "$repo_root/../shared/data" ]; then
        data_dir=$(cd "$repo_root/../shared/data" && pwd)
        echo "export THRIFTY_DATA_DIR=$data_dir"
    fi
}

services_running() {
    [ -f "$state/redis/port" ] && [ -f "$state/pg/port" ] &&
        pid_alive "$(cat "$state/redis/redis.pid" 2>/dev/null || true)" &&
        pid_alive "$(head -n 1 "$state/pg/data/postmaster.pid" 2>/dev/null || true)"
}

stop_all() {
    local pid bindir
    if [ -f "$state/redis/redis.pid" ]; then
        pid=$(cat "$state/redis/redis.pid")
        stop_pid "$pid"
    fi
    if [ -f "$state/pg/data/postmaster.pid" ]; then
        pid=$(head -n 1 "$state/pg/data/postmaster.pid")
        if bindir=$(pg_bindir 2>/dev/null); then
            as_pg "$bindir/pg_ctl" -D "$state/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        fi
        stop_pid "$pid"
    fi
    rm -rf "$state"
}

case $cmd in
up)
    if services_running; then
        log "already running (state in $state)"
        print_env
        exit 0
    fi
    stop_all # leftovers of a half-started or crashed run
    mkdir -p "$state"
    # The postgres user must be able to reach its data dir inside our state dir.
    chmod 755 "$state"
    if ! start_redis || ! start_postgres; then
        stop_all
        exit 1
    fi
    print_env | tee "$state/env.sh"
    ;;
env)
    services_running || {
        log "not running (state dir $state)"
        exit 1
    }
    print_env
    ;;
down)
    stop_all
    log "stopped"
    ;;
*)
    usage
    ;;
esac
