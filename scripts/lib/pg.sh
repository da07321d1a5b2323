# A throwaway PostgreSQL server from Debian's packages, for tests and
# examples: `. scripts/lib/pg.sh`, then pg_init DIR PORT, any extra lines
# into DIR/db/postgresql.conf, pg_start DIR, pg_database DIR PORT NAME
# PASSWORD (a role and a database of that name). pg_stop DIR ends it.

# Installs the server if it is missing; sets pg_bin.
pg_install() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/postgres" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq postgresql > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql > /dev/null; }
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  # The server refuses to run as root; Debian's package made this user.
  id postgres > /dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
}

as_pg() { runuser -u postgres -- "$@"; }

# A cluster in DIR/db on 127.0.0.1:PORT: password authentication over TCP,
# prepared transactions allowed (the sink's two-phase commit), no fsync.
pg_init() {
  local dir=$1 port=$2
  pg_install
  chown postgres: "$dir"
  as_pg "$pg_bin/initdb" -D "$dir/db" -U postgres --auth-local=trust --auth-host=scram-sha-256 > "$dir/initdb.log" 2>&1
  cat >> "$dir/db/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_prepared_transactions = 20
fsync = off
CONF
}

pg_start() { as_pg "$pg_bin/pg_ctl" -D "$1/db" -l "$1/server.log" -w start > /dev/null; }

pg_stop() { as_pg "$pg_bin/pg_ctl" -D "$1/db" -m immediate stop > /dev/null 2>&1 || true; }

# Runs SQL as the superuser in database DB.
pg_admin() {
  local dir=$1 port=$2 db=$3
  shift 3
  as_pg psql -q -h "$dir" -p "$port" -U postgres -d "$db" "$@"
}

pg_database() {
  local dir=$1 port=$2 name=$3 password=$4
  pg_admin "$dir" "$port" postgres -c "CREATE ROLE $name LOGIN PASSWORD '$password'" -c "CREATE DATABASE $name OWNER $name"
}
