# Sourced by .ci/run: a throwaway PostgreSQL server on loopback for the ledger tests
# (tests/test_ledger.py runs every ledger test against it when BTARD_TEST_POSTGRES_URL is set).
#
#   start_test_postgres   install PostgreSQL from Debian packages when it is missing, start a
#                         server in a fresh temporary directory (127.0.0.1, a free port, a random
#                         password), create a database and export BTARD_TEST_POSTGRES_URL.
#                         PostgreSQL refuses to run as root, so as root the server runs as the
#                         `postgres` user (runuser). Returns non-zero, with nothing left running,
#                         when any step is impossible; the caller then tests on SQLite only.
#   stop_test_postgres    stop that server and remove its directory.
#
# Every step checks its own status (`|| return 1`): a function called as `f || ...` runs with
# `set -e` switched off.

BTARD_PG_DIR=""
BTARD_PG_BIN=""

_pg_log() { echo "ci/postgres: $*" >&2; }

_pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_install() {
    _pg_log "PostgreSQL not found; installing it from Debian packages"
    local apt=(apt-get)
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { _pg_log "not root and no sudo: cannot install"; return 1; }
        apt=(sudo -n apt-get)
    fi
    command -v apt-get >/dev/null 2>&1 || { _pg_log "no apt-get: cannot install"; return 1; }
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq postgresql >/dev/null || return 1
}

_pg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_test_postgres() {
    BTARD_PG_BIN=$(_pg_bindir) || true
    if [ -z "$BTARD_PG_BIN" ]; then
        _pg_install || return 1
        BTARD_PG_BIN=$(_pg_bindir) || { _pg_log "installed, but no initdb/pg_ctl found"; return 1; }
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        _pg_log "running as root and there is no postgres user to run the server as"; return 1
    fi
    BTARD_PG_DIR=$(mktemp -d /tmp/btard-pg.XXXXXX) || return 1
    local password port
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))') || return 1
    port=$(_pg_free_port) || return 1
    printf '%s\n' "$password" > "$BTARD_PG_DIR/pwfile" || return 1
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$BTARD_PG_DIR" || return 1; fi
    _pg_as_owner "$BTARD_PG_BIN/initdb" -D "$BTARD_PG_DIR/data" -U btard --pwfile="$BTARD_PG_DIR/pwfile" \
        --auth=scram-sha-256 -E UTF8 --no-instructions >"$BTARD_PG_DIR/initdb.log" 2>&1 \
        || { _pg_log "initdb failed: $(tail -n 1 "$BTARD_PG_DIR/initdb.log")"; stop_test_postgres; return 1; }
    _pg_as_owner "$BTARD_PG_BIN/pg_ctl" -D "$BTARD_PG_DIR/data" -l "$BTARD_PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $BTARD_PG_DIR" start >/dev/null \
        || { _pg_log "server did not start: $(tail -n 1 "$BTARD_PG_DIR/server.log" 2>/dev/null)"; stop_test_postgres; return 1; }
    PGPASSWORD="$password" "$BTARD_PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U btard btard_test \
        || { _pg_log "createdb failed"; stop_test_postgres; return 1; }
    export BTARD_TEST_POSTGRES_URL="postgresql+psycopg://btard:$password@127.0.0.1:$port/btard_test"
    _pg_log "PostgreSQL $("$BTARD_PG_BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port (data in $BTARD_PG_DIR)"
}

stop_test_postgres() {
    [ -n "$BTARD_PG_DIR" ] || return 0
    if [ -f "$BTARD_PG_DIR/data/postmaster.pid" ]; then
        _pg_as_owner "$BTARD_PG_BIN/pg_ctl" -D "$BTARD_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$BTARD_PG_DIR"
    BTARD_PG_DIR=""
    unset BTARD_TEST_POSTGRES_URL
}
