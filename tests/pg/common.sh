# tests/pg/common.sh: sourced by tests/pg/start, stop and ctl. Finds Debian's
# PostgreSQL binaries and runs them as an unprivileged user (PostgreSQL
# refuses to run as root). Trusts: the state file that tests/pg/start wrote
# (KEY=VALUE lines, read without evaluating them).

PG_STATE=${TERN_PG_STATE:-${TMPDIR:-/tmp}/tern-test-pg-$(id -u).state}

pg_bindir() {
  local d best=
  # Highest installed major version; Debian 12 ships 15.
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/pg_ctl ]] && best=$d
  done
  [[ -n $best ]] || { echo "tests/pg: no /usr/lib/postgresql/*/bin/pg_ctl (apt-get install postgresql)" >&2; return 1; }
  echo "$best"
}

# as_pg CMD...: runs CMD as the cluster's owner.
as_pg() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u "${PG_OWNER:-postgres}" -- "$@"
  else
    "$@"
  fi
}

# state_get KEY: a value from the state file.
state_get() {
  [[ -f $PG_STATE ]] || return 1
  local line
  while IFS= read -r line; do
    if [[ ${line%%=*} == "$1" ]]; then
      printf '%s\n' "${line#*=}"
      return 0
    fi
  done <"$PG_STATE"
  return 1
}

# wait_ready BIN PORT SECONDS: until the server accepts connections.
wait_ready() {
  local bin=$1 port=$2 limit=$3 i
  for ((i = 0; i < limit * 10; i++)); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && return 0
    sleep 0.1
  done
  return 1
}
