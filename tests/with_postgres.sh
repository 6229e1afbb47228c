#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster on loopback, then removes it.
#   tests/with_postgres.sh CMD [ARGS...]
# The command sees SAGALOOP_PG_DSN. If SAGALOOP_PG_DSN is already set, the
# command runs against that server and nothing is started.
set -euo pipefail

if [[ -n "${SAGALOOP_PG_DSN:-}" ]]; then
    exec "$@"
fi

pg_bin=""
for candidate in /usr/lib/postgresql/*/bin; do
    [[ -x "$candidate/pg_ctl" ]] && pg_bin="$candidate"
done
if [[ -z "$pg_bin" ]]; then
    echo "with_postgres: no PostgreSQL server found (install Debian's postgresql package)" >&2
    exit 1
fi

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

dir="$(mktemp -d /tmp/sagaloop-pg.XXXXXX)"
[[ "$(id -u)" == 0 ]] && chown postgres: "$dir"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

stop() {
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT

as_pg "$pg_bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
# fsync stays on: the tests check durability, not a weakened server.
as_pg "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300" \
    >/dev/null || { cat "$dir/server.log" >&2; exit 1; }

export SAGALOOP_PG_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
export SAGALOOP_PG_DATA="$dir/data"
export SAGALOOP_PG_CTL="$pg_bin/pg_ctl"
echo "with_postgres: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
