#!/usr/bin/env bash
# Stops what start-cluster.sh started under DIR.
dir=${1:-/tmp/weir-e2e}
for p in scheduler controller-manager apiserver etcd; do
  [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2> /dev/null
  rm -f "$dir/$p.pid"
done
exit 0
