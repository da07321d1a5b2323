# Sourced by the e2e scripts. `kubectl wait --for=condition=X` (kubectl
# 1.32) fails at once, instead of waiting, while the object has no
# status.conditions yet (a fresh CRD on a 1.20 API server, a StreamJob the
# operator has not reconciled); this polls until the condition is True.
# Usage: wait_condition RESOURCE CONDITION SECONDS [kubectl args...]
wait_condition() {
  local resource=$1 condition=$2 seconds=$3
  shift 3
  local deadline=$(( $(date +%s) + seconds ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    local status
    status=$(kubectl "$@" get "$resource" -o jsonpath="{.status.conditions[?(@.type==\"$condition\")].status}" 2> /dev/null || true)
    [ "$status" = True ] && return 0
    sleep 0.2
  done
  echo "timed out after ${seconds}s waiting for $resource to be $condition" >&2
  return 1
}
