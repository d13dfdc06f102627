#!/usr/bin/env bash
# Install PostgreSQL (server + client) for the MLflow tracking server (`make server`) and its test.
# Idempotent: does nothing when initdb/pg_ctl/postgres are already installed. Needs root (apt-get).
# Prints the PostgreSQL bin dir on its last line (Debian keeps initdb/pg_ctl off PATH).
set -euo pipefail

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
    echo "$d"
  elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then
    dirname "$(command -v initdb)"
  fi
}

if [[ -z $(pg_bindir) ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install_postgres.sh: PostgreSQL is missing and installing it needs root (apt-get install postgresql)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The Debian package also creates and starts a system cluster on 5432; traitlab never uses it (the
  # tracking server runs its own cluster on its own port), so stop it where a service manager exists.
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
  if command -v pg_ctlcluster >/dev/null; then
    for c in $(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}'); do
      pg_ctlcluster "${c%/*}" "${c#*/}" stop || true
    done
  fi
fi
bindir=$(pg_bindir)
if [[ -z $bindir ]]; then
  echo "install_postgres.sh: postgresql installed but initdb/pg_ctl/postgres not found" >&2
  exit 1
fi
"$bindir/postgres" --version >&2
echo "$bindir"
