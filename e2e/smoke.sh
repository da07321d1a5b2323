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
trap '"$here/stop-cluster.sh" "$dir"; [ -n "${op:-}" ] && kill "$op" 2>/dev/null; true' EXIT
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
kubectl apply -f "$root/examples/counts.yaml" > /dev/null
for _ in $(seq 1 100); do
  phase=$(kubectl get sj counts -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ -n "$phase" ] && break
  sleep 0.2
done
[ "$phase" = "Starting" ] || { echo "FAIL: phase is '$phase'"; cat "$dir/operator.log"; exit 1; }
kubectl get configmap counts-job > /dev/null
kubectl get service counts-coordinator > /dev/null
pods=$(kubectl get pods -l weir.dev/job=counts -o name | sort | tr '\n' ' ')
[ "$pods" = "pod/counts-coordinator-1 pod/counts-worker-0-1 " ] || { echo "FAIL: pods are '$pods'"; exit 1; }
owner=$(kubectl get pod counts-worker-0-1 -o jsonpath='{.metadata.ownerReferences[0].kind}')
[ "$owner" = "StreamJob" ] || { echo "FAIL: owner is '$owner'"; exit 1; }
gen=$(kubectl get sj counts -o jsonpath='{.status.observedGeneration}')
[ "$gen" = "$(kubectl get sj counts -o jsonpath='{.metadata.generation}')" ] || { echo "FAIL: observedGeneration $gen"; exit 1; }
kubectl get sj
echo "ok: operator created ConfigMap, Service and pods and wrote status"

# Reapplying the same manifest changes nothing.
before=$(kubectl get sj counts -o jsonpath='{.metadata.resourceVersion}')
kubectl apply -f "$root/examples/counts.yaml" > /dev/null
sleep 3
after=$(kubectl get sj counts -o jsonpath='{.metadata.resourceVersion}')
[ "$before" = "$after" ] || { echo "FAIL: reapplying changed the object ($before -> $after)"; exit 1; }
echo "ok: reapplying an unchanged manifest changed nothing"

kubectl delete sj counts --timeout=30s > /dev/null
echo "ok: deleted without a stuck finalizer"
echo "smoke passed in $(( $(date +%s) - start ))s"
