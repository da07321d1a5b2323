#!/usr/bin/env bash
# Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
# under DIR (default /tmp/weir-e2e), writes DIR/kubeconfig and registers a
# Node named weir-node. The API server listens on the gateway of the Docker
# network `weir-e2e` (172.30.0.1), made here if missing, so that pods run as
# containers on that network reach it as pods reach theirs.
# Stop with e2e/stop-cluster.sh DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# kubectl and helm from PyPI (scripts/k8s-tools), first on PATH.
PATH="$("$here/../scripts/k8s-tools"):$PATH"
dir=${1:-/tmp/weir-e2e}
bin=$("$here/build-kubernetes.sh")
mkdir -p "$dir" && cd "$dir"
api_port=${WEIR_E2E_API_PORT:-16443}
network=weir-e2e
api_host=172.30.0.1
docker network inspect "$network" > /dev/null 2>&1 \
  || docker network create --subnet 172.30.0.0/16 --gateway "$api_host" "$network" > /dev/null
etcd_port=${WEIR_E2E_ETCD_PORT:-12379}

# Certificates: a CA, a serving certificate for the API server, a service-account key pair.
if [ ! -f serving.crt ]; then
  # A cluster CA and a serving certificate it signs: rustls (kube-rs in
  # a pod) refuses a self-signed CA certificate as a server's.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=weir-e2e-ca -keyout ca.key -out ca.crt 2> /dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kubernetes -keyout serving.key -out serving.csr 2> /dev/null
  printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    "$api_host" > serving.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile serving.ext \
    -out serving.crt 2> /dev/null
  openssl genrsa -out sa.key 2048 2> /dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2> /dev/null
  echo "weir-e2e-token,admin,admin,system:masters" > tokens.csv
fi
cat > kubeconfig <<KC
apiVersion: v1
kind: Config
clusters:
- cluster: {server: "https://$api_host:$api_port", insecure-skip-tls-verify: true}
  name: e2e
users:
- name: admin
  user: {token: weir-e2e-token}
contexts:
- context: {cluster: e2e, user: admin, namespace: default}
  name: e2e
current-context: e2e
KC

rm -rf etcd-data
etcd --data-dir etcd-data --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls http://127.0.0.1:0 > etcd.log 2>&1 &
echo $! > etcd.pid
# WEIR_E2E_AUDIT=1: every request's metadata (verb, resource, user agent)
# goes to audit.log, e.g. to count what the operator asks for.
audit=()
if [ -n "${WEIR_E2E_AUDIT:-}" ]; then
  printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules: [{level: Metadata}]\n' > audit-policy.yaml
  audit=(--audit-policy-file audit-policy.yaml --audit-log-path audit.log)
fi
"$bin/kube-apiserver" "${audit[@]}" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address "$api_host" \
  --secure-port "$api_port" --advertise-address "$api_host" --tls-cert-file serving.crt --tls-private-key-file serving.key \
  --token-auth-file tokens.csv --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file sa.pub \
  --service-account-signing-key-file sa.key --allow-privileged=false > apiserver.log 2>&1 &
echo $! > apiserver.pid
export KUBECONFIG="$dir/kubeconfig"
for _ in $(seq 1 150); do
  kubectl get --raw /readyz > /dev/null 2>&1 && break
  sleep 0.2
done
kubectl get --raw /readyz > /dev/null
"$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" --leader-elect=false --bind-address 127.0.0.1 \
  --secure-port 0 --controllers '*,-nodeipam' --service-account-private-key-file sa.key \
  --root-ca-file ca.crt --node-monitor-grace-period 12s --node-monitor-period 2s \
  --use-service-account-credentials=false > controller-manager.log 2>&1 &
echo $! > controller-manager.pid
"$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
  > scheduler.log 2>&1 &
echo $! > scheduler.pid

[ "${WEIR_E2E_REGISTER_NODE:-1}" = 1 ] && kubectl apply -f - > /dev/null <<NODE
apiVersion: v1
kind: Node
metadata: {name: weir-node, labels: {kubernetes.io/hostname: weir-node}}
NODE
echo "$dir/kubeconfig"
