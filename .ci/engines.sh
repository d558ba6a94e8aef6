#!/usr/bin/env bash
# PostgreSQL and Redis for the tests of the cluster backends.
#
# Sourced by .ci/run (the engines stay up until that shell exits), or run
# with a command, which gets the engines for its lifetime:
#   .ci/engines.sh go test ./internal/directory/
#
# An engine already answering on 127.0.0.1:5432 (trust auth, user postgres)
# or 127.0.0.1:6379 is used as it is (each test makes its own database or
# key prefix). Otherwise postgresql, postgresql-contrib and redis-server are
# installed from apt when missing, and private instances are started on
# free ports under a temporary directory and stopped on exit. Exports
# DUSK_TEST_POSTGRES_URL and DUSK_TEST_REDIS_URL; values already set are
# kept. DUSK_ENGINES_PRIVATE=1 starts private instances even when the
# standard ports answer.

engines_tmp=""
engines_pg_data=""
engines_pg_bin=""
engines_redis_pidfile=""

engines_log() { printf 'engines: %s\n' "$*" >&2; }

# as_pg runs a PostgreSQL server binary: initdb and postgres refuse root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

engines_tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

engines_redis_ping() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    read -r -t 5 reply <&3 || exit 1
    [ "${reply%$'\r'}" = "+PONG" ]
  ) 2>/dev/null
}

engines_free_port() {
  local p i
  for i in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 20000 ))
    if ! engines_tcp_open "$p"; then echo "$p"; return 0; fi
  done
  return 1
}

engines_apt() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  engines_log "installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

engines_stop() {
  if [ -n "$engines_pg_data" ]; then
    as_pg "$engines_pg_bin/pg_ctl" -D "$engines_pg_data" -m immediate -w stop >/dev/null 2>&1 || true
    engines_pg_data=""
  fi
  if [ -n "$engines_redis_pidfile" ] && [ -f "$engines_redis_pidfile" ]; then
    kill "$(cat "$engines_redis_pidfile")" 2>/dev/null || true
    engines_redis_pidfile=""
  fi
  if [ -n "$engines_tmp" ]; then rm -rf "$engines_tmp"; engines_tmp=""; fi
}

engines_tmpdir() {
  if [ -z "$engines_tmp" ]; then
    engines_tmp=$(mktemp -d /tmp/dusk-engines.XXXXXX)
    chmod 755 "$engines_tmp"
  fi
}

engines_postgres() {
  if [ -n "${DUSK_TEST_POSTGRES_URL:-}" ]; then return 0; fi
  if [ -z "${DUSK_ENGINES_PRIVATE:-}" ] && command -v psql >/dev/null 2>&1 &&
     psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    export DUSK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
    engines_log "PostgreSQL: using the server on 127.0.0.1:5432"
    return 0
  fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
     ! ls /usr/share/postgresql/*/extension/pg_trgm.control >/dev/null 2>&1; then
    engines_apt postgresql postgresql-contrib
  fi
  engines_pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  engines_tmpdir
  local data="$engines_tmp/pg" port attempt
  mkdir -p "$data"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$data"
  # C.UTF-8: pg_trgm indexes non-ASCII letters only with a UTF-8 ctype.
  as_pg "$engines_pg_bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  for attempt in 1 2 3 4 5; do
    port=$(engines_free_port) || break
    if as_pg "$engines_pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
         -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null; then
      engines_pg_data="$data"
      export DUSK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
      engines_log "PostgreSQL: private instance on 127.0.0.1:$port"
      return 0
    fi
  done
  engines_log "PostgreSQL: could not start a private instance"; cat "$data/server.log" >&2 || true
  return 1
}

engines_redis() {
  # Some tests start and kill a redis-server of their own (outages), so
  # the binary is needed even when a server already answers.
  command -v redis-server >/dev/null 2>&1 || engines_apt redis-server
  if [ -n "${DUSK_TEST_REDIS_URL:-}" ]; then return 0; fi
  if [ -z "${DUSK_ENGINES_PRIVATE:-}" ] && engines_redis_ping 6379; then
    export DUSK_TEST_REDIS_URL="redis://127.0.0.1:6379"
    engines_log "Redis: using the server on 127.0.0.1:6379"
    return 0
  fi
  engines_tmpdir
  local port attempt
  for attempt in 1 2 3 4 5; do
    port=$(engines_free_port) || break
    engines_redis_pidfile="$engines_tmp/redis.pid"
    if redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
         --dir "$engines_tmp" --pidfile "$engines_redis_pidfile" --logfile "$engines_tmp/redis.log" >/dev/null; then
      for _ in $(seq 1 50); do
        if engines_tcp_open "$port"; then
          export DUSK_TEST_REDIS_URL="redis://127.0.0.1:$port"
          engines_log "Redis: private instance on 127.0.0.1:$port"
          return 0
        fi
        sleep 0.1
      done
    fi
  done
  engines_log "Redis: could not start a private instance"; cat "$engines_tmp/redis.log" >&2 || true
  return 1
}

engines_start() {
  engines_postgres && engines_redis
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # Run as a command: engines for the lifetime of "$@".
  set -euo pipefail
  trap engines_stop EXIT
  engines_start
  if [ "$#" -gt 0 ]; then "$@"; fi
else
  trap engines_stop EXIT
  engines_start
fi
