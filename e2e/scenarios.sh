#!/usr/bin/env bash
# End-to-end scenarios on a real API server with two nodes whose agents
# (docker_agent.py) run every pod, the operator's included, as a container
# of the weir image: helm install of the chart, jobs through kubectl,
# container kills, exact output. Prints a line per scenario with its time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# kubectl and helm from PyPI (scripts/k8s-tools), first on PATH.
PATH="$("$here/../scripts/k8s-tools"):$PATH"
. "$here/wait.sh"
root=$(cd "$here/.." && pwd)
# The host's weir only reads checkpoints (`weir checkpoints list`); pods run the image.
weir="${WEIR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/weir}"
t=$(date +%s)
"$root/scripts/build-image" weir:dev
[ -x "$weir" ] || (cd "$root" && cargo build --release --bin weir)
dir=$(mktemp -d /tmp/weir-e2e.XXXXXX)
proxy_port=${WEIR_E2E_PROXY_PORT:-18011}
api_port=${WEIR_E2E_API_PORT:-16443}
agents=()
cleanup() {
  for a in "${agents[@]}"; do kill "$a" 2> /dev/null; done
  [ -n "${proxy:-}" ] && kill "$proxy" 2> /dev/null
  docker ps -aq --filter label=weir-e2e.node | xargs -r docker rm -f > /dev/null
  "$here/stop-cluster.sh" "$dir"
}
trap cleanup EXIT
scenario() { echo "scenario: $1 ... ok ($(( $(date +%s) - $2 ))s)"; }
fail() {
  echo "FAIL: $*"
  kubectl get sj,pods -A -o wide || true
  kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.name}: {.status.containerStatuses[0].state.waiting.message}{"\n"}{end}' || true
  for f in "$dir"/agent-*.log; do echo "== $f"; tail -8 "$f"; done
  for c in $(docker ps -a --filter label=weir-e2e.node --format '{{.Names}}'); do
    echo "== docker logs $c"; docker logs --tail 8 "$c" 2>&1
  done
  exit 1
}
# The container now running a pod (namespace default).
container_of() {
  docker ps -q --filter "label=weir-e2e.pod=default/$1" --filter status=running | head -1
}
pod_ip() { kubectl get pod "$1" -o jsonpath='{.status.podIP}'; }
# A job's current pod in slot N (0 the coordinator, 1 + i worker i): pods
# are named per attempt, and status.deployed.pods says which are current.
current() { kubectl get sj "$1" -o jsonpath="{.status.deployed.pods[$2]}"; }
# A call to JOB's coordinator API: HTTPS, trusting only the job's CA (from
# its Secret) and asking for the name in every job certificate.
api() {
  local job=$1 path=$2
  shift 2
  kubectl get secret "$job-token" -o jsonpath='{.data.ca\.crt}' | base64 -d > "$dir/$job-ca.crt"
  curl -s --max-time 5 --cacert "$dir/$job-ca.crt" --resolve "weir-job:8081:$(pod_ip "$(current "$job" 0)")" \
    "https://weir-job:8081$path" "$@"
}
# Every key's counts are exactly 1..n, with ROWS updates in all, over KEYS
# keys (0: any number; a generator with many keys does not draw them all).
exact() {
  python3 - "$@" <<'PY'
import collections, glob, json, sys
out, want_rows, want_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for f in sorted(glob.glob(out + "/part-*.jsonl")) for l in open(f)]
per = collections.defaultdict(list)
for r in rows:
    per[r["key"]].append(r["count"])
bad = [k for k, v in per.items() if sorted(v) != list(range(1, len(v) + 1))]
assert len(rows) == want_rows and len(per) == (want_keys or len(per)) and not bad, (len(rows), len(per), bad[:5])
PY
}

export WEIR_E2E_REGISTER_NODE=0
export KUBECONFIG=$("$here/start-cluster.sh" "$dir")
kubectl proxy --port="$proxy_port" > "$dir/proxy.log" 2>&1 &
proxy=$!
for node in a:1 b:2; do
  python3 "$here/docker_agent.py" --proxy "http://127.0.0.1:$proxy_port" --node "weir-node-${node%%:*}" \
    --prefix "172.30.${node##*:}" --network weir-e2e --workdir "$dir" --api-host 172.30.0.1 --api-port "$api_port" \
    > "$dir/agent-${node%%:*}.log" 2>&1 &
  agents+=($!)
done
for _ in $(seq 1 100); do
  [ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[0].status}{end}' 2> /dev/null)" = TrueTrue ] \
    && break
  sleep 0.2
done
scenario "image weir:dev built; control plane and two Docker nodes up" "$t"

t=$(date +%s)
helm=helm
"$helm" install weir "$root/charts/weir" --namespace weir-system --create-namespace \
  --set image.repository=weir --set image.tag=dev --set image.pullPolicy=Never \
  --set checkpoints.defaultStorage="file:///data/storage" --set leaderElection.enabled=true \
  --set podDisruptionBudget.enabled=false --set nodeLostAfter=5s --set statusInterval=2s \
  --set 'nodeSelector.kubernetes\.io/hostname=weir-node-a' \
  > "$dir/notes.txt"  # policy/v1 needs 1.21; this API server is 1.20
kubectl -n weir-system rollout status deployment/weir --timeout=60s > /dev/null || fail "operator not ready"
grep -q "kubectl apply -f examples/kubernetes/volume.yaml -f examples/kubernetes/counts.yaml" "$dir/notes.txt" \
  || fail "NOTES.txt does not say how to run the example: $(cat "$dir/notes.txt")"
scenario "helm install; operator Deployment ready; NOTES name the example to apply" "$t"

t=$(date +%s)
# The cluster's storage, as an administrator provides it: a ReadWriteMany
# hostPath volume that the examples' claim binds to.
mkdir -p "$dir/pv"
chown 65532:65532 "$dir/pv"
kubectl apply -f - > /dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: weir-e2e-data}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $dir/pv}
PV
examples="$root/examples/kubernetes"
kubectl apply -f "$examples/volume.yaml" -f "$examples/counts.yaml" > /dev/null
wait_condition streamjob/counts Ready 60 || fail "job not Ready"
for _ in $(seq 1 50); do
  first=$(kubectl get sj counts -o jsonpath='{.status.checkpoints.latest.id}')
  [ -n "$first" ] && break
  sleep 0.2
done
for _ in $(seq 1 50); do
  later=$(kubectl get sj counts -o jsonpath='{.status.checkpoints.latest.id}')
  [ "${later:-0}" -gt "${first:-0}" ] && break
  sleep 0.2
done
[ "${later:-0}" -gt "${first:-0}" ] || fail "checkpoint id did not advance ($first -> $later)"
row=$(kubectl get sj counts --no-headers)
echo "$row" | awk '{exit !($2 == "Running" && $4 ~ /^[0-9]+$/)}' || fail "kubectl get sj does not show phase and checkpoint: $row"
[ "$(kubectl get pvc weir-data -o jsonpath='{.status.phase}')" = Bound ] || fail "claim not bound"
[ "$(kubectl get networkpolicy counts -o jsonpath='{.spec.podSelector.matchLabels.weir\.dev/job}')" = counts ] \
  || fail "no NetworkPolicy for the job"
token=$(kubectl get secret counts-token -o jsonpath='{.data.token}' | base64 -d)
[ "${#token}" = 64 ] || fail "no job token Secret"
kubectl get configmap counts-job -o yaml | grep -q "$token" && fail "the job token leaked into the ConfigMap"
code=$(api counts /v1/savepoints -o /dev/null -w '%{http_code}' -X POST)
[ "$code" = 401 ] || fail "a savepoint without the job token was not refused ($code)"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$(pod_ip "$(current counts 0)"):8081/v1/job")
[ "$code" = 403 ] || fail "the coordinator API answered /v1/job over plain HTTP ($code)"
[ "$(curl -s "http://$(pod_ip "$(current counts 0)"):8081/healthz")" = ok ] || fail "plain HTTP probes do not reach /healthz"
# A CA of no job: a client trusting it must not reach the API.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=stranger -keyout "$dir/other-ca.key" \
  -out "$dir/other-ca.crt" 2> /dev/null
if curl -s --max-time 5 --cacert "$dir/other-ca.crt" --resolve "weir-job:8081:$(pod_ip "$(current counts 0)")" \
    https://weir-job:8081/v1/job > /dev/null; then
  fail "a client trusting another CA reached the coordinator API"
fi
scenario "kubectl apply -f examples/kubernetes/counts.yaml; Ready; status.checkpoints.latest.id advances ($first -> $later); job token Secret; coordinator API HTTPS only (plain HTTP 403 but for probes, another CA refused, no token 401); NetworkPolicy" "$t"

t=$(date +%s)
# Everything between pods is captured on the network while a worker is
# killed and replaced: its registration and new shuffle channels included.
command -v tcpdump > /dev/null || { apt-get update -qq && apt-get install -y -qq tcpdump > /dev/null; }
bridge="br-$(docker network inspect -f '{{.Id}}' weir-e2e | cut -c1-12)"
# The coordinator's HTTP API (8081) included: the operator reads the job's
# status there, which names the workers.
tcpdump -i "$bridge" -U -w "$dir/capture.pcap" tcp 2> "$dir/tcpdump.log" &
capture=$!
sleep 1
before=$(kubectl get sj counts -o jsonpath='{.status.checkpoints.latest.id}')
old_pod=$(current counts 2)
killed_ms=$(date +%s%3N)
docker kill -s KILL "$(container_of "$old_pod")" > /dev/null
for _ in $(seq 1 200); do
  new_pod=$(current counts 2)
  [ "$new_pod" != "$old_pod" ] && kubectl get pod "$new_pod" > /dev/null 2>&1 && break
  sleep 0.05
done
after_ms=$(( $(date +%s%3N) - killed_ms ))
[ "$after_ms" -ge 1000 ] || fail "worker recreated ${after_ms}ms after the kill, before the 1s restart delay"
for _ in $(seq 1 60); do
  [ "$(kubectl get sj counts -o jsonpath='{.status.restarts.count}')" = 1 ] && \
    [ "$(kubectl get pod "$new_pod" -o jsonpath='{.status.phase}' 2> /dev/null)" = Running ] && \
    [ "$(kubectl get sj counts -o jsonpath='{.status.restoredFrom}')" -ge "$before" ] 2> /dev/null && break
  sleep 0.5
done
[ "$(kubectl get sj counts -o jsonpath='{.status.restarts.lastFailure.exitCode}')" = 137 ] || fail "no failure recorded"
[ "$(kubectl get sj counts -o jsonpath='{.status.restarts.failures}')" = 1 ] || fail "one kill counted as more than one failure"
restored=$(kubectl get sj counts -o jsonpath='{.status.restoredFrom}')
[ "${restored:-0}" -ge "$before" ] || fail "resumed from checkpoint ${restored:-none}, older than $before"
sleep 2
kill -INT "$capture"
wait "$capture" 2> /dev/null || true
captured=$(stat -c %s "$dir/capture.pcap")
[ "$captured" -gt 100000 ] || fail "the capture holds only $captured bytes"
# Without TLS the token travels in every registration and shuffle hello,
# and worker names in every registration and in the job status the
# operator reads.
if grep -aqF -e "$token" -e "counts-worker-" "$dir/capture.pcap"; then
  fail "the job token or a worker's name crossed the network in clear"
fi
scenario "kill -9 of a worker: failed (137), replaced by $new_pod ${after_ms}ms later (delay 1s), resumed from checkpoint $restored >= $before; ${captured} bytes captured meanwhile (API port included), no token or name in clear (TLS)" "$t"

t=$(date +%s)
before=$(kubectl get sj counts -o jsonpath='{.status.checkpoints.latest.id}')
old_pod=$(current counts 0)
docker kill -s KILL "$(container_of "$old_pod")" > /dev/null
# The new coordinator itself says where it resumed from.
restored=""
for _ in $(seq 1 60); do
  new_pod=$(current counts 0)
  if [ "$new_pod" != "$old_pod" ]; then
    restored=$(api counts /v1/job 2> /dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("restoredFrom") or "")' 2> /dev/null || true)
    [ -n "$restored" ] && break
  fi
  sleep 0.5
done
[ "$(kubectl get sj counts -o jsonpath='{.status.restarts.count}')" = 2 ] || fail "coordinator failure not restarted"
[ "$(kubectl get sj counts -o jsonpath='{.status.restarts.lastFailure.pod}')" = "$old_pod" ] || fail "failure not attributed"
[ "${restored:-0}" -ge "$before" ] || fail "the new coordinator resumed from checkpoint ${restored:-none}, older than $before"
scenario "kill -9 of the coordinator: recreated, resumed from checkpoint $restored >= $before" "$t"

wait_phase() {
  for _ in $(seq 1 $(( ${3:-60} * 2 ))); do
    [ "$(kubectl get sj "${2:-counts}" -o jsonpath='{.status.phase}')" = "$1" ] && return 0
    sleep 0.5
  done
  fail "phase $1 not reached"
}

t=$(date +%s)
# Ready: running and checkpointing again after the kills.
wait_condition streamjob/counts Ready 60 || fail "not Ready again after the kills"
conditions=$(kubectl get sj counts -o jsonpath='{.status.conditions}')
pods_before=$(kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}')
kubectl apply -f "$examples/counts.yaml" > /dev/null
sleep 3
[ "$(kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}')" = "$pods_before" ] || fail "reapply restarted pods"
after=$(kubectl get sj counts -o jsonpath='{.status.conditions}')
[ "$(echo "$conditions" | python3 -c 'import json,sys; print([(c["type"],c["status"],c["lastTransitionTime"]) for c in json.load(sys.stdin) if c["type"]!="CheckpointsHealthy"])')" = \
  "$(echo "$after" | python3 -c 'import json,sys; print([(c["type"],c["status"],c["lastTransitionTime"]) for c in json.load(sys.stdin) if c["type"]!="CheckpointsHealthy"])')" ] \
  || fail "reapply changed conditions"
scenario "reapplying the same manifest changes no pod and no condition" "$t"

t=$(date +%s)
kubectl patch sj counts --type=merge -p '{"spec":{"suspend":true}}' > /dev/null
wait_phase Suspended
for _ in $(seq 1 60); do
  [ -z "$(kubectl get pods -l weir.dev/job=counts -o name)" ] && break
  sleep 0.5
done
[ -z "$(kubectl get pods -l weir.dev/job=counts -o name)" ] || fail "pods left while suspended"
kubectl patch sj counts --type=merge -p '{"spec":{"suspend":false}}' > /dev/null
wait_phase Running
scenario "suspend: pods deleted, state kept; resume: Running again" "$t"

t=$(date +%s)
kubectl patch sj counts --type=merge -p '{"spec":{"parallelism":3}}' > /dev/null
sleep 1
wait_phase Running
[ "$(kubectl get configmap counts-job -o jsonpath='{.data.job\.yaml}' | grep -c 'parallelism: 3')" = 1 ] || fail "new parallelism not deployed"
scenario "parallelism 2 -> 3 with LastState: pods recreated, Running" "$t"

t=$(date +%s)
job_pods=$(kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}')
"$helm" upgrade weir "$root/charts/weir" --namespace weir-system --reuse-values --set logLevel=debug > /dev/null
kubectl -n weir-system rollout status deployment/weir --timeout=90s > /dev/null || fail "operator upgrade did not roll out"
[ "$(kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}')" = "$job_pods" ] || fail "helm upgrade restarted job pods"
scenario "helm upgrade of the operator keeps the running job's pods" "$t"

t=$(date +%s)
# Helm installs crds/ once and never upgrades them; the chart's README says
# to apply the new CRD first. A changed CRD (here an extra printer column)
# applied server-side, then helm upgrade: running jobs keep their pods.
python3 - "$root/crds/streamjob.yaml" > "$dir/crd-v2.yaml" <<'PY'
import sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts.count"})
# This 1.20 API server predates CEL rules, and its server-side apply
# refuses fields it does not know; 1.25+ takes the CRD as it is.
def strip(node):
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        for v in node.values():
            strip(v)
    elif isinstance(node, list):
        for v in node:
            strip(v)
strip(crd)
print(yaml.safe_dump(crd))
PY
kubectl apply --server-side --force-conflicts --validate=false -f "$dir/crd-v2.yaml" > /dev/null \
  || fail "the changed CRD was not applied"
"$helm" upgrade weir "$root/charts/weir" --namespace weir-system --reuse-values --set logLevel=info > /dev/null
kubectl -n weir-system rollout status deployment/weir --timeout=90s > /dev/null || fail "operator upgrade did not roll out"
# The API server rebuilds a CRD's handler asynchronously after an update:
# the column is served within moments, not at once.
served=no
for _ in $(seq 1 60); do
  header=$(kubectl get sj counts 2>/dev/null | sed -n 1p || true)
  case "$header" in *RESTARTS*) served=yes; break ;; esac
  sleep 0.5
done
[ "$served" = yes ] || fail "the new printer column is not served within 30 s"
[ "$(kubectl get pods -l weir.dev/job=counts -o jsonpath='{.items[*].metadata.uid}')" = "$job_pods" ] \
  || fail "the CRD upgrade restarted job pods"
scenario "CRD upgrade: a changed CRD applied server-side, then helm upgrade; new column served, job pods kept" "$t"

t=$(date +%s)
for _ in $(seq 1 240); do
  [ "$(kubectl get sj counts -o jsonpath='{.status.phase}')" = Finished ] && break
  sleep 0.5
done
[ "$(kubectl get sj counts -o jsonpath='{.status.phase}')" = Finished ] || fail "job did not finish"
restored=$(kubectl get sj counts -o jsonpath='{.status.restoredFrom}')
[ -n "$restored" ] || fail "no restoredFrom"
exact "$dir/pv/output/counts" 1200000 100 || fail "output not exact"
scenario "job finished after both kills (restoredFrom $restored); output exact: 1200000 records once" "$t"

chk="$dir/pv/checkpoints/default"
t=$(date +%s)
kubectl delete -f "$examples/counts.yaml" --timeout=30s > /dev/null || fail "deletion stuck"
wait_gone() {
  for _ in $(seq 1 60); do
    [ -z "$(kubectl get pods -l "weir.dev/job=$1" -o name)" ] && return 0
    sleep 0.5
  done
  fail "pods of $1 left after deletion"
}
wait_gone counts
kept=$("$weir" checkpoints list "file://$chk/counts")
echo "$kept" | grep -q completed || fail "Retain did not keep the checkpoints: $kept"
scenario "kubectl delete with deletionPolicy Retain: pods gone, checkpoints kept, no stuck finalizer" "$t"

t=$(date +%s)
kubectl apply -f "$examples/running-sums.yaml" > /dev/null
wait_condition streamjob/running-sums Ready 60 || fail "running-sums not Ready"
for _ in $(seq 1 60); do
  [ -n "$(kubectl get sj running-sums -o jsonpath='{.status.checkpoints.latest.id}')" ] && break
  sleep 0.5
done
sj_get() { kubectl get sj running-sums -o jsonpath="$1"; }
kubectl patch sj running-sums --type=merge -p '{"spec":{"savepointNonce":1}}' > /dev/null
for _ in $(seq 1 60); do
  manual=$(sj_get '{.status.savepoints[0].path}')
  [ -n "$manual" ] && break
  sleep 0.5
done
[ -n "$manual" ] || fail "no savepoint in status.savepoints after savepointNonce: $(sj_get '{.status.savepointInfo}')"
[ -f "$chk/running-sums/savepoints/$(basename "$manual")/_metadata" ] || fail "savepoint $manual is not in storage"
[ "$(sj_get '{.status.savepoints[0].kind}')" = Manual ] || fail "the savepoint is not listed as Manual"
scenario "savepointNonce: a savepoint taken in the background and listed in status.savepoints ($(basename "$manual"))" "$t"

t=$(date +%s)
attempt=$(sj_get '{.status.deployed.attempt}')
kubectl patch sj running-sums --type=merge -p '{"spec":{"parallelism":3}}' > /dev/null
# One read of all three: read one by one, the old attempt's Running could
# pass with the new attempt's number, and the phase read after be Starting.
for _ in $(seq 1 120); do
  read -r kind phase now_attempt <<< "$(sj_get '{.status.savepoints[0].kind} {.status.phase} {.status.deployed.attempt}')"
  [ "$kind" = Upgrade ] && [ "$phase" = Running ] && [ "$now_attempt" != "$attempt" ] && break
  sleep 0.5
done
[ "$(sj_get '{.status.savepoints[0].kind}')" = Upgrade ] || fail "no stop-with-savepoint before the upgrade: $(sj_get '{.status}')"
[ "$(sj_get '{.status.phase}')" = Running ] || fail "the upgraded job does not run"
upgrade_sp=$(sj_get '{.status.savepoints[0].checkpoint}')
[ "$(sj_get '{.status.restoredFrom}')" = "$upgrade_sp" ] || fail "the upgraded job did not resume from its savepoint's checkpoint $upgrade_sp"
# The event is written before the status, but a list may be served by an
# API server's cache a moment behind: looked for a while.
stopped=""
for _ in $(seq 1 60); do
  stopped=$(kubectl get events --field-selector involvedObject.name=running-sums,reason=Stopped -o name 2>/dev/null || true)
  [ -n "$stopped" ] && break
  sleep 0.5
done
[ -n "$stopped" ] || fail "no Stopped event; the job's events: $(kubectl get events --field-selector involvedObject.name=running-sums 2>&1)"
scenario "upgradeMode Savepoint: parallelism 2 -> 3 stops the job with a savepoint (checkpoint $upgrade_sp) and resumes from it" "$t"

t=$(date +%s)
kubectl patch sj running-sums --type=merge -p '{"spec":{"savepoints":{"maxHistory":1}}}' > /dev/null
for _ in $(seq 1 120); do
  [ ! -e "$chk/running-sums/savepoints/$(basename "$manual")" ] && [ -z "$(sj_get '{.status.savepointInfo.dispose}')" ] && break
  sleep 0.5
done
[ ! -e "$chk/running-sums/savepoints/$(basename "$manual")" ] || fail "the savepoint past maxHistory was not disposed of"
[ "$(sj_get '{.status.savepoints[*].kind}')" = Upgrade ] || fail "status.savepoints keeps more than maxHistory"
[ "$(sj_get '{.status.deployed.attempt}')" = "$(( attempt + 1 ))" ] || fail "a retention change restarted the job"
scenario "savepoints.maxHistory 1: the older savepoint deleted from storage by a disposal pod, the job untouched" "$t"

t=$(date +%s)
kubectl delete -f "$examples/running-sums.yaml" --timeout=90s > /dev/null || fail "deletion stuck"
wait_gone running-sums
ls "$chk/running-sums/savepoints"/sp-*/_metadata > /dev/null 2>&1 || fail "no savepoint before deletion"
scenario "kubectl delete with deletionPolicy Savepoint: savepoint taken, pods gone, no stuck finalizer" "$t"

t=$(date +%s)
sp=$(ls -d "$chk/running-sums/savepoints"/sp-* | head -1)
sp_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$sp/_metadata")
sed -e 's/name: running-sums/name: running-sums-v2/' \
  -e "s|^spec:|spec:\n  initialSavepointPath: file:///data/checkpoints/default/running-sums/savepoints/$(basename "$sp")|" \
  "$examples/running-sums.yaml" | kubectl apply -f - > /dev/null
for _ in $(seq 1 60); do
  [ "$(kubectl get sj running-sums-v2 -o jsonpath='{.status.restoredFrom}')" = "$sp_id" ] && break
  sleep 0.5
done
[ "$(kubectl get sj running-sums-v2 -o jsonpath='{.status.restoredFrom}')" = "$sp_id" ] || fail "the new job did not start from the savepoint"
scenario "a new job with initialSavepointPath starts from the deleted job's savepoint (checkpoint $sp_id)" "$t"

t=$(date +%s)
for _ in $(seq 1 60); do
  [ -n "$(kubectl get sj running-sums-v2 -o jsonpath='{.status.checkpoints.latest.id}')" ] && break
  sleep 0.5
done
# Argo CD's default prune: the garbage collector deletes the job's pods
# while the operator's finalizer still holds the StreamJob. The operator is
# away meanwhile, so the pods are surely gone before it sees the deletion
# (otherwise it often asks the coordinator first, and wins the race).
kubectl -n weir-system scale deployment/weir --replicas=0 > /dev/null
for _ in $(seq 1 60); do
  [ -z "$(kubectl -n weir-system get pods -l app.kubernetes.io/name=weir-operator -o name)" ] && break
  sleep 0.5
done
kubectl delete sj running-sums-v2 --cascade=foreground --wait=false > /dev/null || fail "foreground deletion refused"
wait_gone running-sums-v2
kubectl -n weir-system scale deployment/weir --replicas=1 > /dev/null
kubectl wait --for=delete sj/running-sums-v2 --timeout=120s > /dev/null || fail "foreground deletion stuck"
wait_gone running-sums-v2
ls "$chk/running-sums-v2/savepoints"/sp-*/_metadata > /dev/null 2>&1 || fail "no savepoint before a foreground deletion"
for _ in $(seq 1 50); do
  how=$(kubectl get events --field-selector involvedObject.name=running-sums-v2,reason=Savepoint -o jsonpath='{.items[0].message}')
  [ -n "$how" ] && break
  sleep 0.2
done
[ -n "$how" ] || fail "no Savepoint event"
case "$how" in "savepoint of checkpoint "*) ;; *) fail "the savepoint was not copied by the savepoint pod: $how" ;; esac
scenario "kubectl delete --cascade=foreground with deletionPolicy Savepoint: $how" "$t"

t=$(date +%s)
kubectl apply -f "$examples/running-sums.yaml" > /dev/null
for _ in $(seq 1 60); do
  restored=$(kubectl get sj running-sums -o jsonpath='{.status.restoredFrom}')
  [ -n "$restored" ] && break
  sleep 0.5
done
[ -n "$restored" ] || fail "the reapplied job did not resume from its kept state"
kubectl patch sj running-sums --type=merge -p '{"spec":{"deletionPolicy":"Purge"}}' > /dev/null
kubectl delete sj running-sums --timeout=90s > /dev/null || fail "deletion stuck"
wait_gone running-sums
[ -z "$(ls -A "$chk/running-sums" 2> /dev/null)" ] || fail "checkpoints not purged: $(ls "$chk/running-sums")"
# The event is written beside the finalizer's removal; give it a moment to land.
for _ in $(seq 1 50); do
  purged=$(kubectl get events --field-selector involvedObject.name=running-sums,reason=Purged -o name)
  [ -n "$purged" ] && break
  sleep 0.2
done
[ -n "$purged" ] || fail "no Purged event"
scenario "reapplied after deletion: resumed (restoredFrom $restored); deletionPolicy Purge: purge pod ran, checkpoints gone" "$t"

t=$(date +%s)
if out=$(sed 's/parallelism: 2/parallelism: -1/' "$examples/counts.yaml" | kubectl apply --dry-run=server -f - 2>&1); then
  fail "a negative parallelism was accepted"
fi
echo "$out" | grep -q "spec.parallelism" || fail "the refusal does not name the field: $out"
scenario "a malformed manifest is refused by kubectl apply --dry-run=server naming spec.parallelism" "$t"

t=$(date +%s)
printf '{"key": "a", "value": 1}\nnot json\n' > "$dir/pv/bad.jsonl"
chown 65532:65532 "$dir/pv/bad.jsonl"
cat > "$dir/bad.yaml" <<JOB
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: broken, namespace: default}
spec:
  parallelism: 1
  checkpoints: {interval: 500ms}
  errorPolicy: {onBadRecord: fail}
  restartStrategy: {fixedDelay: {attempts: 1, delay: 1s}}
  pipeline:
    source: {file: {path: /data/bad.jsonl}}
    steps: [{keyBy: {field: key}}, {aggregate: {count: true}}]
    sink: {file: {path: /data/bad-out}}
  podTemplate:
    spec:
      volumes: [{name: data, persistentVolumeClaim: {claimName: weir-data}}]
      containers: [{name: weir, volumeMounts: [{name: data, mountPath: /data}]}]
JOB
kubectl apply -f "$dir/bad.yaml" > /dev/null
wait_phase Failed broken
kubectl get events --field-selector involvedObject.name=broken,reason=RestartBudgetExhausted -o name | grep -q . \
  || fail "no RestartBudgetExhausted event"
restarts=$(kubectl get sj broken -o jsonpath='{.status.restarts.count}')
sleep 4
[ "$(kubectl get sj broken -o jsonpath='{.status.restarts.count}')" = "$restarts" ] || fail "restarted after giving up"
kubectl get pod "$(current broken 0)" > /dev/null || fail "failed pods are kept for their logs"
kubectl get sj broken -o jsonpath='{.status.restarts.lastFailure}' | grep -q coordinator || fail "last failure not recorded"
why=$(kubectl get sj broken -o jsonpath='{.status.restarts.lastFailure.message}')
echo "$why" | grep -q "bad.jsonl:2" || fail "the failure's cause is not in status: '$why'"
scenario "restart budget exhausted (bad records, fail policy): Failed, Warning event, no further restarts; cause in status: ${why:0:90}" "$t"

# A job like the example under another name and output, with half its
# input (600,000 records) and SPEC_LINES (indented two spaces) appended to
# its spec.
variant() {
  sed -e "s/name: counts/name: $1/" -e "s|/data/output/counts|/data/output/$1|" \
      -e 's/count: 1200000/count: 600000/' "$examples/counts.yaml"
  printf '%s\n' "${@:2}" | sed 's/^/  /'
}

t=$(date +%s)
# Aggregate state for 400,000 keys does not fit in 40 MiB: a worker is
# killed by the kernel (cgroup memory limit) and reported OOMKilled.
variant hungry 'resources: {limits: {memory: 40Mi}}' \
  | sed -e 's/keys: 100, rate: 20000, count: 600000/keys: 400000, rate: 100000, count: 800000/' \
        -e 's/attempts: 5/attempts: 50/' > "$dir/hungry.yaml"
kubectl apply -f "$dir/hungry.yaml" > /dev/null
reason=""
for _ in $(seq 1 120); do
  reason=$(kubectl get sj hungry -o jsonpath='{.status.restarts.lastFailure.reason}')
  [ -n "$reason" ] && break
  sleep 0.5
done
[ "$reason" = OOMKilled ] || fail "a worker over its memory limit was reported as '${reason:-nothing}', not OOMKilled"
oom_pod=$(kubectl get sj hungry -o jsonpath='{.status.restarts.lastFailure.pod}')
slot=$(kubectl get sj hungry -o jsonpath='{.status.deployed.pods}' | python3 -c 'import json,sys; p=json.load(sys.stdin); print([i for i,n in enumerate(p) if n.rsplit("-",1)[0]==sys.argv[1].rsplit("-",1)[0]][0])' "$oom_pod")
for _ in $(seq 1 60); do
  replacement=$(current hungry "$slot")
  [ "$replacement" != "$oom_pod" ] && [ "$(kubectl get pod "$replacement" -o jsonpath='{.status.phase}' 2> /dev/null)" = Running ] && break
  sleep 0.5
done
[ "$(kubectl get pod "$replacement" -o jsonpath='{.status.phase}')" = Running ] || fail "$oom_pod not replaced after OOMKilled"
# The user raises the limit; the job goes on from its last checkpoint.
kubectl patch sj hungry --type=merge -p '{"spec":{"resources":{"limits":{"memory":"1Gi"}}}}' > /dev/null
wait_phase Finished hungry
exact "$dir/pv/output/hungry" 800000 0 || fail "output of the OOM-killed job not exact"
scenario "a worker over its 40Mi limit: OOMKilled in status.restarts.lastFailure, recreated; limit raised, output exact (800000 once)" "$t"

t=$(date +%s)
variant frozen > "$dir/frozen.yaml"
kubectl apply -f "$dir/frozen.yaml" > /dev/null
wait_condition streamjob/frozen Ready 60 || fail "frozen not Ready"
for _ in $(seq 1 60); do
  [ -n "$(kubectl get sj frozen -o jsonpath='{.status.checkpoints.latest.id}')" ] && break
  sleep 0.5
done
frozen_pod=$(current frozen 0)
coordinator_uid=$(kubectl get pod "$frozen_pod" -o jsonpath='{.metadata.uid}')
docker pause "$(container_of "$frozen_pod")" > /dev/null
sleep 12
docker unpause "$(docker ps -q --filter "label=weir-e2e.pod=default/$frozen_pod" --filter status=paused)" > /dev/null
wait_phase Finished frozen
[ "$(current frozen 0)" = "$frozen_pod" ] && [ "$(kubectl get pod "$frozen_pod" -o jsonpath='{.metadata.uid}')" = "$coordinator_uid" ] \
  || fail "the paused coordinator's pod was replaced"
exact "$dir/pv/output/frozen" 600000 100 || fail "output after the coordinator's pause not exact"
scenario "coordinator container paused 12 s (docker pause, past the workers' lease) and resumed: job finished, output exact" "$t"

t=$(date +%s)
# The operator's container is killed while it creates a job's objects; its
# replacement finishes the job's deployment, with no pod twice.
variant orphaned > "$dir/orphaned.yaml"
operator=$(docker ps -q --filter label=weir-e2e.pod --filter status=running \
  | xargs docker inspect -f '{{.Id}} {{index .Config.Labels "weir-e2e.pod"}}' | awk '$2 ~ /^weir-system\// {print $1}')
kubectl apply -f "$dir/orphaned.yaml" > /dev/null
sleep 0.3
docker kill -s KILL "$operator" > /dev/null
kubectl -n weir-system rollout status deployment/weir --timeout=120s > /dev/null || fail "operator not back"
wait_phase Finished orphaned
[ "$(kubectl get pods -l weir.dev/job=orphaned -o name | sort | uniq -d)" = "" ] || fail "a pod twice"
exact "$dir/pv/output/orphaned" 600000 100 || fail "output after the operator's kill not exact"
scenario "the operator's container killed right after kubectl apply: its replacement deployed the job; output exact" "$t"

t=$(date +%s)
# A node drained for maintenance: kubectl drain cordons it and evicts the
# job's pods there (the Eviction API, graceful). The evictions are one
# failure, not one per pod or per reconcile; the pods come back on the
# other node under new names and the job resumes from its last checkpoint.
# A job of 1,200,000 records whose pods prefer node b (the operator is on
# node a), Ready, checkpointing, and all on node b.
start_on_node_b() {
  local prefer_b='s/^      volumes:/      affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, preference: {matchExpressions: [{key: kubernetes.io\/hostname, operator: In, values: [weir-node-b]}]}}]}}\n      volumes:/'
  sed -e 's/count: 600000/count: 1200000/' -e "$prefer_b" <(variant "$1") > "$dir/$1.yaml"
  kubectl apply -f "$dir/$1.yaml" > /dev/null
  wait_condition "streamjob/$1" Ready 60 || fail "$1 not Ready"
  for _ in $(seq 1 60); do
    [ -n "$(kubectl get sj "$1" -o jsonpath='{.status.checkpoints.latest.id}')" ] && break
    sleep 0.5
  done
  placed=$(kubectl get pods -l "weir.dev/job=$1" -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
  [ "$placed" = weir-node-b ] || fail "the pods of $1 are not all on weir-node-b: $placed"
}
start_on_node_b drained
kubectl drain weir-node-b --ignore-daemonsets --delete-emptydir-data --timeout=120s > "$dir/drain.log" 2>&1 \
  || fail "kubectl drain failed: $(cat "$dir/drain.log")"
grep -q evicted "$dir/drain.log" || fail "kubectl drain evicted nothing: $(cat "$dir/drain.log")"
wait_phase Finished drained 180
moved=$(kubectl get pods -l weir.dev/job=drained -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
[ "$moved" = weir-node-a ] || fail "the replacements are not on weir-node-a: $moved"
failures=$(kubectl get sj drained -o jsonpath='{.status.restarts.failures}')
[ "$failures" = 1 ] || fail "a drain of three pods counted ${failures:-no} failures"
exact "$dir/pv/output/drained" 1200000 100 || fail "output after the drain not exact"
kubectl uncordon weir-node-b > /dev/null
scenario "kubectl drain of the job's node: 3 pods evicted, one failure, recreated on the other node; output exact (1200000 once)" "$t"

t=$(date +%s)
# A node is lost, as in a power cut: its agent stops reporting and every
# container on it freezes. The job's pods all run there (they prefer node
# b; the operator is on node a). Once the node has been NotReady for
# nodeLostAfter, the operator counts one failure for the three pods, deletes
# them with no grace period (no kubelet is left to confirm their end) and
# recreates them on node a under new names; the job resumes from its last
# checkpoint and its output is exact.
start_on_node_b stranded
lost_pods=$(kubectl get sj stranded -o jsonpath='{.status.deployed.pods[*]}')
kill -STOP "${agents[1]}"
docker ps -q --filter label=weir-e2e.node=weir-node-b | xargs -r docker pause > /dev/null
lost_at=$(date +%s)
reason=""
for _ in $(seq 1 180); do
  reason=$(kubectl get sj stranded -o jsonpath='{.status.restarts.lastFailure.reason}')
  [ -n "$reason" ] && break
  sleep 0.5
done
[ "$reason" = NodeLost ] || fail "the lost node was reported as '${reason:-nothing}', not NodeLost"
detected=$(( $(date +%s) - lost_at ))
wait_phase Finished stranded 180
for p in $lost_pods; do
  kubectl get pod "$p" > /dev/null 2>&1 && fail "pod $p of the lost node was not deleted"
done
moved=$(kubectl get pods -l weir.dev/job=stranded -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
[ "$moved" = weir-node-a ] || fail "the replacements are not on weir-node-a: $moved"
[ "$(kubectl get sj stranded -o jsonpath='{.status.restarts.failures}')" = 1 ] \
  || fail "one lost node with three pods counted $(kubectl get sj stranded -o jsonpath='{.status.restarts.failures}') failures"
exact "$dir/pv/output/stranded" 1200000 100 || fail "output after the node loss not exact"
# The node does not come back as it was: its frozen processes are gone.
docker ps -q --filter label=weir-e2e.node=weir-node-b | xargs -r docker rm -f > /dev/null
kill -CONT "${agents[1]}"
scenario "node lost (agent stopped, containers frozen): NodeLost after ${detected}s, 3 pods force-deleted and recreated on the other node, one failure; output exact (1200000 once)" "$t"

t=$(date +%s)
# A worker's container cut off from the pod network (docker network
# disconnect) past the heartbeat timeout (10 s), then connected again
# under its address: the coordinator loses it and restarts in place, and
# the worker, hearing nothing for as long, fences itself off (drops the
# subtasks of its attempt) before it talks again; it rejoins under a new
# epoch, nothing it held is kept, and its pod is not replaced. Cut off a
# second time for good, its liveness probe fails (as a kubelet's would,
# from the node), the container is killed and the pod replaced under the
# restart strategy; the output is exact either way.
sed -e 's/count: 600000/count: 1400000/' <(variant cutoff) > "$dir/cutoff.yaml"
kubectl apply -f "$dir/cutoff.yaml" > /dev/null
wait_condition streamjob/cutoff Ready 60 || fail "cutoff not Ready"
for _ in $(seq 1 60); do
  [ -n "$(kubectl get sj cutoff -o jsonpath='{.status.checkpoints.latest.id}')" ] && break
  sleep 0.5
done
cut_pod=$(current cutoff 1)
cut=$(container_of "$cut_pod")
cut_ip=$(pod_ip "$cut_pod")
epoch_before=$(api cutoff /v1/job | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
docker network disconnect weir-e2e "$cut" > /dev/null
kind=""
for _ in $(seq 1 60); do
  kind=$(api cutoff /v1/job | python3 -c 'import json,sys; print(json.load(sys.stdin).get("lastFailureKind") or "")')
  [ -n "$kind" ] && break
  sleep 0.5
done
[ "$kind" = WorkerLost ] || fail "the cut-off worker was reported as '${kind:-nothing}', not WorkerLost"
lost_after=$(( $(date +%s) - t ))
# Past the heartbeat timeout on the worker's side too, well before its
# liveness probe has failed three times 10 s apart.
sleep 4
docker network connect --ip "$cut_ip" weir-e2e "$cut" > /dev/null
for _ in $(seq 1 80); do
  epoch_after=$(api cutoff /v1/job | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["epoch"] if j["state"]=="Running" else "")')
  [ -n "$epoch_after" ] && [ "$epoch_after" != "$epoch_before" ] && break
  sleep 0.5
done
[ -n "$epoch_after" ] && [ "$epoch_after" != "$epoch_before" ] || fail "the job did not run again under a new epoch after the cut"
# grep -q stops reading at the first match; under pipefail the SIGPIPE
# that docker logs then gets would fail a pipe, so no pipe.
grep -q "fencing myself off" <(docker logs "$cut" 2>&1) || fail "the cut-off worker did not fence itself off"
[ "$(current cutoff 1)" = "$cut_pod" ] || fail "a worker back within its liveness limit was replaced"
[ "$(kubectl get sj cutoff -o jsonpath='{.status.restarts.failures}')" = 0 ] || fail "a recovery in place counted as a pod failure"
docker network disconnect weir-e2e "$cut" > /dev/null
for _ in $(seq 1 120); do
  [ "$(current cutoff 1)" != "$cut_pod" ] && break
  sleep 0.5
done
[ "$(current cutoff 1)" != "$cut_pod" ] || fail "a worker cut off for good was not replaced"
grep -q "liveness probe failed for default/$cut_pod" "$dir"/agent-*.log || fail "the replacement was not the liveness probe's doing"
wait_phase Finished cutoff 180
[ "$(kubectl get sj cutoff -o jsonpath='{.status.restarts.failures}')" = 1 ] || fail "the worker cut off for good counted $(kubectl get sj cutoff -o jsonpath='{.status.restarts.failures}') failures, not 1"
exact "$dir/pv/output/cutoff" 1400000 100 || fail "output after the network cuts not exact"
scenario "worker cut off (docker network disconnect): WorkerLost after ${lost_after}s, reconnected it fenced itself off and rejoined under a new epoch, same pod; cut off for good: liveness failed, pod replaced, one failure; output exact (1400000 once)" "$t"

t=$(date +%s)
# helm upgrade to a rebuilt image of a new version (a new image id and
# version label; the same binary, since a second release build would cost
# minutes): the operator rolls out on it; a running job keeps its pods and
# the image it was deployed with, even when a pod of it is replaced; a job
# created afterwards takes the new one.
"$root/scripts/build-image" weir:next 0.1.1-e2e > /dev/null
[ "$(docker image inspect -f '{{.Id}}' weir:next)" != "$(docker image inspect -f '{{.Id}}' weir:dev)" ] \
  || fail "the rebuilt image is the same image"
sed -e 's/count: 600000/count: 1000000/' <(variant steady) > "$dir/steady.yaml"
kubectl apply -f "$dir/steady.yaml" > /dev/null
wait_condition streamjob/steady Ready 60 || fail "steady not Ready"
steady_pods=$(kubectl get pods -l weir.dev/job=steady -o jsonpath='{.items[*].metadata.uid}')
"$helm" upgrade weir "$root/charts/weir" --namespace weir-system --reuse-values --set image.tag=next > /dev/null
kubectl -n weir-system rollout status deployment/weir --timeout=120s > /dev/null || fail "the upgrade to weir:next did not roll out"
# rollout status returns once the new pod is ready; the old one may still
# be terminating (it hands over its lease) for a moment.
operator_images() { kubectl -n weir-system get pods -l app.kubernetes.io/name=weir-operator -o jsonpath='{.items[*].spec.containers[0].image}'; }
for _ in $(seq 1 60); do
  [ "$(operator_images)" = weir:next ] && break
  sleep 0.5
done
[ "$(operator_images)" = weir:next ] || fail "the operator does not run weir:next only: $(operator_images)"
sleep 3
[ "$(kubectl get pods -l weir.dev/job=steady -o jsonpath='{.items[*].metadata.uid}')" = "$steady_pods" ] \
  || fail "the operator's upgrade restarted a running job's pods"
[ "$(kubectl get sj steady -o jsonpath='{.status.deployed.image}')" = weir:dev ] || fail "the running job's deployed image changed"
old_pod=$(current steady 2)
docker kill -s KILL "$(container_of "$old_pod")" > /dev/null
for _ in $(seq 1 60); do
  new_pod=$(current steady 2)
  [ "$new_pod" != "$old_pod" ] && kubectl get pod "$new_pod" > /dev/null 2>&1 && break
  sleep 0.5
done
[ "$(kubectl get pod "$new_pod" -o jsonpath='{.spec.containers[0].image}')" = weir:dev ] \
  || fail "the replaced pod of a running job moved to another image"
variant fresh > "$dir/fresh.yaml"
kubectl apply -f "$dir/fresh.yaml" > /dev/null
wait_condition streamjob/fresh Ready 60 || fail "fresh not Ready"
[ "$(kubectl get pods -l weir.dev/job=fresh -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | sort -u)" = weir:next ] \
  || fail "a job created after the upgrade does not run weir:next"
wait_phase Finished steady 180
wait_phase Finished fresh 180
exact "$dir/pv/output/steady" 1000000 100 || fail "output of the job running through the upgrade not exact"
exact "$dir/pv/output/fresh" 600000 100 || fail "output of the job created after the upgrade not exact"
scenario "helm upgrade to a rebuilt image (weir:next, version 0.1.1-e2e): operator on it, the running job kept its pods and weir:dev (also for a replaced pod), a new job runs weir:next; both outputs exact" "$t"
