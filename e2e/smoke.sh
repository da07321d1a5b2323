#!/usr/bin/env bash
# The operator against a real API server (no node agent yet, so job pods
# stay Pending): the CRD installs, the schema refuses a bad manifest naming
# the field, the operator creates the job's ConfigMap, Service and pods with
# owner references, writes status, and the printer columns show it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# kubectl and helm from PyPI (scripts/k8s-tools), first on PATH.
PATH="$("$here/../scripts/k8s-tools"):$PATH"
. "$here/wait.sh"
root=$(cd "$here/.." && pwd)
dir=$(mktemp -d /tmp/weir-e2e.XXXXXX)
# Every command here may fail (the process already gone) and must not turn
# a passed run into a failed one under set -e.
trap '"$here/stop-cluster.sh" "$dir" || true; for p in ${op:-} ${a:-} ${b:-} ${c:-}; do kill -CONT "$p" 2> /dev/null || true; kill "$p" 2> /dev/null || true; done' EXIT
start=$(date +%s)
export KUBECONFIG=$("$here/start-cluster.sh" "$dir")
echo "control plane up in $(( $(date +%s) - start ))s"
weir="${WEIR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/weir}"
[ -x "$weir" ] || (cd "$root" && cargo build --release --bin weir)

# kubectl checks the CRD against the server's own schema, and this 1.20
# server predates the admission rules (x-kubernetes-validations, 1.25+),
# which it then drops; the schema's own checks below still run.
kubectl apply --validate=false -f "$root/crds/streamjob.yaml" > /dev/null
wait_condition crd/streamjobs.weir.dev Established 30
bad=$(sed 's/parallelism: 2/parallelism: -1/' "$root/examples/counts.yaml")
if out=$(echo "$bad" | kubectl apply --dry-run=server -f - 2>&1); then
  echo "FAIL: a negative parallelism was accepted"; exit 1
fi
echo "$out" | grep -q "spec.parallelism" || { echo "FAIL: the refusal does not name the field: $out"; exit 1; }
echo "ok: bad manifest refused: $(echo "$out" | tail -1)"

"$weir" operator --health 127.0.0.1:0 --job-image weir:e2e > "$dir/operator.log" 2>&1 &
op=$!
# The Kubernetes example: its checkpoints are on a volume every pod mounts
# (a job's pod-local file:// storage is refused in operator mode).
kubectl apply -f "$root/examples/kubernetes/counts.yaml" > /dev/null
for _ in $(seq 1 100); do
  phase=$(kubectl get sj counts -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ -n "$phase" ] && break
  sleep 0.2
done
[ "$phase" = "Starting" ] || { echo "FAIL: phase is '$phase'"; cat "$dir/operator.log"; exit 1; }
kubectl get configmap counts-job > /dev/null
kubectl get service counts-coordinator > /dev/null
pods=$(kubectl get pods -l weir.dev/job=counts -o name | sort | tr '\n' ' ')
[ "$pods" = "pod/counts-coordinator-1 pod/counts-worker-0-1 pod/counts-worker-1-1 " ] || { echo "FAIL: pods are '$pods'"; exit 1; }
owner=$(kubectl get pod counts-worker-0-1 -o jsonpath='{.metadata.ownerReferences[0].kind}')
[ "$owner" = "StreamJob" ] || { echo "FAIL: owner is '$owner'"; exit 1; }
gen=$(kubectl get sj counts -o jsonpath='{.status.observedGeneration}')
[ "$gen" = "$(kubectl get sj counts -o jsonpath='{.metadata.generation}')" ] || { echo "FAIL: observedGeneration $gen"; exit 1; }
kubectl get sj
echo "ok: operator created ConfigMap, Service and pods and wrote status"

# The pods cannot be scheduled (this cluster has no nodes), and status says so.
for _ in $(seq 1 100); do
  why=$(kubectl get sj counts -o jsonpath='{.status.conditions[?(@.type=="Reconciling")].message}')
  echo "$why" | grep -q Unschedulable && break
  sleep 0.2
done
echo "$why" | grep -q "counts-.*Unschedulable" || { echo "FAIL: status does not say why pods are pending: $why"; exit 1; }
echo "ok: status says why pods are pending: ${why:0:100}"

# Reapplying the same manifest changes nothing: no new generation, the same
# pods, the same conditions (the scheduler's words in messages may vary).
state() {
  kubectl get sj counts -o jsonpath='{.metadata.generation} {.status.deployed}' && echo
  kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}' && echo
  kubectl get sj counts -o jsonpath='{range .status.conditions[*]}{.type}={.status}@{.lastTransitionTime} {end}'
}
before=$(state)
kubectl apply -f "$root/examples/kubernetes/counts.yaml" > /dev/null
sleep 3
after=$(state)
[ "$before" = "$after" ] || { echo "FAIL: reapplying changed the job: $before -> $after"; exit 1; }
echo "ok: reapplying an unchanged manifest changed nothing"

# Leader election among replicas: a leader frozen past its lease is
# replaced, and when it wakes it acts on nothing and exits; a leader that
# gets SIGTERM releases the lease so the next one leads at once.
kill "$op"; wait "$op" 2> /dev/null || true; op=""
elect() {
  "$weir" operator --health 127.0.0.1:0 --job-image weir:e2e --leader-lease default/weir-leader \
    --leader-lease-duration 3s > "$dir/op-$1.log" 2>&1 &
}
leads() {  # LOG SECONDS: wait until that operator says it leads
  for _ in $(seq 1 $(( $2 * 10 ))); do grep -q "became the leader" "$1" && return 0; sleep 0.1; done
  return 1
}
elect a; a=$!
leads "$dir/op-a.log" 10 || { echo "FAIL: no leader"; cat "$dir/op-a.log"; exit 1; }
elect b; b=$!
sleep 2
grep -q "became the leader" "$dir/op-b.log" && { echo "FAIL: two leaders"; exit 1; }
kill -STOP "$a"
leads "$dir/op-b.log" 15 || { echo "FAIL: the follower did not take over from a frozen leader"; cat "$dir/op-b.log"; exit 1; }
kubectl patch sj counts --type=merge -p '{"spec":{"restartNonce":1}}' > /dev/null
for _ in $(seq 1 100); do kubectl get pod counts-coordinator-2 > /dev/null 2>&1 && break; sleep 0.1; done
kubectl get pod counts-coordinator-2 > /dev/null || { echo "FAIL: the new leader did not act"; cat "$dir/op-b.log"; exit 1; }
mark=$(wc -l < "$dir/op-a.log")
kill -CONT "$a"
for _ in $(seq 1 100); do kill -0 "$a" 2> /dev/null || break; sleep 0.1; done
kill -0 "$a" 2> /dev/null && { echo "FAIL: the resumed old leader still runs"; exit 1; }
woke=$(tail -n +"$((mark + 1))" "$dir/op-a.log")
echo "$woke" | grep -q "exiting" || { echo "FAIL: the old leader did not say why it left: $woke"; exit 1; }
echo "$woke" | grep -Eq "created pod|deleted pod|reconciled" && { echo "FAIL: the resumed old leader acted: $woke"; exit 1; }
echo "ok: leader frozen past its lease replaced; resumed, it acted on nothing and exited"
elect c; c=$!
sleep 1
terminated=$(date +%s%3N)
kill -TERM "$b"
leads "$dir/op-c.log" 10 || { echo "FAIL: no leader after SIGTERM"; exit 1; }
handover=$(( $(date +%s%3N) - terminated ))
grep -q "released the leader lease" "$dir/op-b.log" || { echo "FAIL: the lease was not released"; exit 1; }
[ "$handover" -lt 2500 ] || { echo "FAIL: handover took ${handover}ms, as long as the lease"; exit 1; }
echo "ok: SIGTERM released the lease; the next operator led ${handover}ms later (lease 3s)"

kubectl delete sj counts --timeout=30s > /dev/null
echo "ok: deleted without a stuck finalizer"
echo "smoke passed in $(( $(date +%s) - start ))s"
