#!/usr/bin/env bash
# MLflow tracking server with a PostgreSQL backend and a local artifact store (`make server`).
#
# Jobs on other machines (SLURM, Ray) log to it with MLFLOW_TRACKING_URI=http://<host>:<port>; artifacts
# go through the server (--artifacts-destination, proxied), so workers need no shared filesystem.
#
# Settings (environment variables):
#   HOST=127.0.0.1      interface to bind; set HOST=0.0.0.0 (and ALLOWED_HOSTS) to serve other machines
#   PORT=5000           server port
#   ARTIFACTS=mlruns/server-artifacts   local artifact root (any path; s3://... works with boto3 installed)
#   WORKERS=2           server worker processes
#   ALLOWED_HOSTS=      extra Host headers to accept (mlflow --allowed-hosts), e.g. "mlflow.lab,10.0.0.5:5000"
#   BACKEND_URI=        an existing database, e.g. postgresql+psycopg2://user@dbhost:5432/mlflow (password via
#                       ~/.pgpass or PGPASSFILE, never on the command line). Unset: this script runs its own
#                       PostgreSQL cluster in PG_DIR on 127.0.0.1:PG_PORT, created on first use:
#   PG_DIR=outputs/postgres  PG_PORT=5433  PG_USER=traitlab  PG_DB=mlflow
#   PYTHON_BIN=.venv/bin    where `mlflow` is
# The server runs in the foreground; Ctrl-C / SIGTERM stops it and the PostgreSQL cluster it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
ARTIFACTS=${ARTIFACTS:-$ROOT/mlruns/server-artifacts}
WORKERS=${WORKERS:-2}
ALLOWED_HOSTS=${ALLOWED_HOSTS:-}
BACKEND_URI=${BACKEND_URI:-}
PG_DIR=${PG_DIR:-$ROOT/outputs/postgres}
PG_PORT=${PG_PORT:-5433}
PG_USER=${PG_USER:-traitlab}
PG_DB=${PG_DB:-mlflow}
PYTHON_BIN=${PYTHON_BIN:-$ROOT/.venv/bin}

die() { echo "tracking_server.sh: $*" >&2; exit 1; }

started_pg=""
server_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -n $started_pg ]]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# PostgreSQL refuses to run as root: as root, cluster commands run as the `postgres` system user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_local_postgres() {
  PG_BIN=$(bash "$ROOT/scripts/install_postgres.sh" | tail -n 1)
  mkdir -p "$PG_DIR"
  PG_DIR=$(cd "$PG_DIR" && pwd)
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$PG_DIR"
    runuser -u postgres -- test -x "$PG_DIR" \
      || die "PG_DIR=$PG_DIR is not reachable by the postgres user (a parent dir is private); pick another PG_DIR"
  fi
  chmod 700 "$PG_DIR"
  export PGPASSFILE=$PG_DIR/pgpass
  if [[ ! -f $PG_DIR/data/PG_VERSION ]]; then
    local pw
    pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    (umask 077; printf '%s\n' "$pw" > "$PG_DIR/pwfile")
    [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DIR/pwfile"
    # TCP connections need the password (scram); no other way in.
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" --username="$PG_USER" --pwfile="$PG_DIR/pwfile" \
      --auth-host=scram-sha-256 --auth-local=reject --encoding=UTF8 >/dev/null
    rm -f "$PG_DIR/pwfile"
    (umask 077; printf '127.0.0.1:%s:*:%s:%s\n' "*" "$PG_USER" "$pw" > "$PGPASSFILE")
  fi
  [[ -f $PGPASSFILE ]] || die "$PGPASSFILE is missing; delete $PG_DIR to recreate the cluster"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" start >/dev/null \
      || die "PostgreSQL did not start; see $PG_DIR/postgres.log"
    started_pg=1
  fi
  "$PYTHON_BIN/python" - "$PG_PORT" "$PG_USER" "$PG_DB" <<'EOF'
import sys

import psycopg2

port, user, db = sys.argv[1], sys.argv[2], sys.argv[3]
con = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
con.autocommit = True
with con.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
    if cur.fetchone() is None:
        cur.execute(f'CREATE DATABASE "{db}"')
con.close()
EOF
  BACKEND_URI="postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

[[ -x $PYTHON_BIN/mlflow ]] || die "$PYTHON_BIN/mlflow not found; run make setup (or set PYTHON_BIN)"
"$PYTHON_BIN/python" -c "import psycopg2" 2>/dev/null \
  || die "psycopg2 is missing: $PYTHON_BIN/pip install psycopg2-binary"
if [[ -z $BACKEND_URI ]]; then
  start_local_postgres
fi
case $BACKEND_URI in
  postgresql*://*:*@*) die "BACKEND_URI carries a password; put it in ~/.pgpass or PGPASSFILE instead" ;;
esac
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
# MLflow 3's GenAI job runner (a dozen huey worker processes) is not used by traitlab: off unless asked.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

args=(server --backend-store-uri "$BACKEND_URI" --artifacts-destination "$ARTIFACTS"
      --host "$HOST" --port "$PORT" --workers "$WORKERS")
[[ -n $ALLOWED_HOSTS ]] && args+=(--allowed-hosts "$ALLOWED_HOSTS")
echo "MLflow tracking server on http://$HOST:$PORT (backend $BACKEND_URI, artifacts $ARTIFACTS)" >&2
echo "  jobs: export MLFLOW_TRACKING_URI=http://$HOST:$PORT" >&2
"$PYTHON_BIN/mlflow" "${args[@]}" &
server_pid=$!
wait "$server_pid"
