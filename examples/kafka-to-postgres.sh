#!/usr/bin/env bash
# Kafka -> Weir -> PostgreSQL on this machine, exactly once, from nothing:
# starts a Kafka-protocol broker (tansu, fetched once by
# scripts/kafka-broker) on 127.0.0.1:19092 and a throwaway PostgreSQL
# server (Debian's, installed if missing) on 127.0.0.1:15432, writes
# 200,000 orders into topic `orders` (examples/orders-to-kafka.yaml), runs
# examples/kafka-to-postgres.yaml, and checks table `order_counts`: one row
# per update, and per key the last count equal to the key's number of
# orders. Everything stops when it ends. Needs root (the server runs as
# the `postgres` user). Pass `--kill` to kill -9 the consuming job twice
# mid-run and run it again: the table still holds each update once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
weir=${WEIR_BIN:-$root/target/release/weir}
[ -x "$weir" ] || cargo build --release --bin weir
work=$(mktemp -d /tmp/weir-example.XXXXXX)
. scripts/lib/pg.sh

tansu=$(scripts/kafka-broker)
"$tansu" broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 \
  --storage-engine memory://tansu/ > "$work/broker.log" 2>&1 &
broker=$!
pg_init "$work" 15432
pg_start "$work"
trap 'kill -9 $broker 2> /dev/null || true; pg_stop "$work"; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<> /dev/tcp/127.0.0.1/19092) 2> /dev/null && break; sleep 0.1; done
export PGPASSWORD="weir-example-$RANDOM$RANDOM"
pg_database "$work" 15432 weir "$PGPASSWORD"
psql() { command psql -X -q -At -h 127.0.0.1 -p 15432 -U weir -d weir "$@"; }
psql -c "CREATE TABLE order_counts (key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL)"
"$tansu" topic create --broker tcp://127.0.0.1:19092 --partitions 4 orders > /dev/null
echo "== writing 200000 orders into topic orders"
(cd "$work" && "$weir" run "$root/examples/orders-to-kafka.yaml")

echo "== kafka -> weir -> postgres"
if [ "${1:-}" = --kill ]; then
  for delay in 0.6 0.5; do
    (cd "$work" && exec "$weir" run "$root/examples/kafka-to-postgres.yaml" > "$work/killed.log" 2>&1) &
    job=$!
    sleep "$delay"
    if kill -9 "$job" 2> /dev/null; then echo "kill -9 of weir run after ${delay}s"; else echo "the run ended within ${delay}s"; fi
    wait "$job" 2> /dev/null || true
  done
fi
(cd "$work" && "$weir" run "$root/examples/kafka-to-postgres.yaml")

read -r rows keys orders <<< "$(psql -F ' ' -c "SELECT (SELECT count(*) FROM order_counts),
  (SELECT count(DISTINCT key) FROM order_counts),
  (SELECT coalesce(sum(last), 0) FROM (SELECT max(count) AS last FROM order_counts GROUP BY key) k)")"
dupes=$(psql -c "SELECT count(*) FROM (SELECT key, count FROM order_counts GROUP BY key, count HAVING count(*) > 1) d")
echo "order_counts: $rows rows, $keys keys, their last counts add up to $orders orders; $dupes duplicated updates"
[ "$rows" = 200000 ] && [ "$orders" = 200000 ] && [ "$dupes" = 0 ] || { echo "FAIL: not every update exactly once"; exit 1; }
echo "every order counted exactly once"
