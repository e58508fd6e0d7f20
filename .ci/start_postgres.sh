#!/usr/bin/env bash
# Start a throwaway local PostgreSQL (Debian's package) for the review-store tests and print its URL.
# Usage: URL=$(.ci/start_postgres.sh DIR [PORT]); stop with: .ci/start_postgres.sh --stop DIR
set -euo pipefail
if [ "${1:-}" = "--stop" ]; then
  d="$2"; bin=$(cat "$d/bin" 2>/dev/null || true)
  [ -n "$bin" ] && { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$bin/pg_ctl -D $d/data -m fast stop" ; else "$bin/pg_ctl" -D "$d/data" -m fast stop; fi; } >/dev/null 2>&1 || true
  rm -rf "$d"; exit 0
fi
dir="$1"; port="${2:-55432}"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
[ -n "$bin" ] || { echo "PostgreSQL is not installed" >&2; exit 1; }
mkdir -p "$dir"; echo "$bin" > "$dir/bin"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
as_pg "$bin/initdb -D $dir/data -A trust -U postgres >/dev/null"
as_pg "$bin/pg_ctl -D $dir/data -l $dir/log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off' start >/dev/null"
as_pg "$bin/createdb -h 127.0.0.1 -p $port -U postgres bloodsmear_test"
echo "postgresql://postgres@127.0.0.1:$port/bloodsmear_test"
