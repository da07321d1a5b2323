#!/usr/bin/env python3
"""A small stand-in for a kubelet, for the e2e suite: runs the pods bound to
one Node as local processes and reports their status.

- Keeps the Node Ready (status heartbeat every few seconds).
- Each pod gets a loopback IP (127.77.x.y); `<service>.<namespace>.svc`
  names resolve through /etc/hosts entries the agent keeps, so job pods and
  the operator find each other as in a cluster.
- A container's command `weir ...` runs the `weir` binary given by --weir;
  env values, fieldRefs (metadata.name/namespace, status.podIP) and Secret
  envFrom and secretKeyRef env are resolved; HOSTNAME is the pod's name, as a kubelet sets it.
- Volumes are real mounts: each pod process runs in its own mount namespace
  (`unshare -m`) with its volumes bind-mounted at their mount paths (empty
  mount points are created on the host). ConfigMap and Secret volumes are
  written to a pod directory, emptyDir is a pod directory, hostPath is the
  host's directory, and a persistentVolumeClaim is the hostPath of the
  PersistentVolume it is bound to (the pod waits until it is bound).
- Exit code -> container terminated (with the log's tail as its message
  under terminationMessagePolicy FallbackToLogsOnError), pod Succeeded/Failed (restartPolicy
  Never) or restarted (Always). Deleting a pod kills its process.

Talks to the API server through `kubectl proxy` on loopback.
"""

import argparse
import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

HOSTS = "/etc/hosts"
MARK = "# weir-e2e"


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


def pod_ip(ns, name):
    h = hashlib.sha256(f"{ns}/{name}".encode()).digest()
    return f"127.77.{h[0]}.{max(h[1], 2)}"


class Agent:
    def __init__(self, api, node, weir, workdir, kubeconfig):
        self.api, self.node, self.weir, self.workdir, self.kubeconfig = api, node, weir, workdir, kubeconfig
        self.procs = {}  # (ns, name) -> (Popen, uid)
        self.lock = threading.Lock()

    def heartbeat(self):
        while True:
            status = {
                "status": {
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
                    "conditions": [{
                        "type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "weir e2e node agent", "lastHeartbeatTime": now(), "lastTransitionTime": now(),
                    }],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                }
            }
            try:
                self.api.call("PATCH", f"/api/v1/nodes/{self.node}/status", status, "application/merge-patch+json")
            except Exception as e:  # noqa: BLE001 - keep beating
                print(f"agent: heartbeat failed: {e}", flush=True)
            time.sleep(5)

    def sync_hosts(self):
        services = self.api.call("GET", "/api/v1/services") or {"items": []}
        pods = self.api.call("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={self.node}") or {"items": []}
        lines = []
        for svc in services["items"]:
            sel = (svc.get("spec") or {}).get("selector") or {}
            if not sel:
                continue
            ns = svc["metadata"]["namespace"]
            for p in pods["items"]:
                labels = p["metadata"].get("labels") or {}
                if p["metadata"]["namespace"] == ns and all(labels.get(k) == v for k, v in sel.items()):
                    name = svc["metadata"]["name"]
                    ip = pod_ip(ns, p["metadata"]["name"])
                    lines.append(f"{ip} {name}.{ns}.svc {name}.{ns}.svc.cluster.local {MARK}")
                    break
        with open(HOSTS) as f:
            kept = [l for l in f.read().splitlines() if MARK not in l]
        with open(HOSTS, "w") as f:
            f.write("\n".join(kept + lines) + "\n")

    def env_for(self, pod, container):
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": self.kubeconfig, "HOME": self.workdir,
               "HOSTNAME": name}
        for src in container.get("envFrom") or []:
            ref = src.get("secretRef")
            if ref:
                secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{ref['name']}") or {}
                for k, v in (secret.get("data") or {}).items():
                    env[k] = base64.b64decode(v).decode()
        for e in container.get("env") or []:
            secret_ref = e.get("valueFrom", {}).get("secretKeyRef")
            if "value" in e:
                value = e["value"]
            elif secret_ref:
                secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{secret_ref['name']}") or {}
                encoded = (secret.get("data") or {}).get(secret_ref["key"])
                if encoded is None:
                    if secret_ref.get("optional"):
                        continue
                    return None  # as a kubelet: the container waits for its Secret
                value = base64.b64decode(encoded).decode()
            else:
                path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                value = {"metadata.name": name, "metadata.namespace": ns, "status.podIP": pod_ip(ns, name)}.get(path, "")
            env[e["name"]] = value.replace("0.0.0.0:", pod_ip(ns, name) + ":")
        env.setdefault("WEIR_DATA_BIND", pod_ip(ns, name) + ":0")
        return env

    def start(self, pod):
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        container = pod["spec"]["containers"][0]
        poddir = os.path.join(self.workdir, "pods", ns, name)
        os.makedirs(poddir, exist_ok=True)
        cmd = (container.get("command") or []) + (container.get("args") or [])
        if not cmd or cmd[0] != "weir":
            self.report(pod, None, 127, "command not runnable by the e2e agent")
            return
        mounts = []
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            local = self.volume_dir(ns, poddir, volumes.get(m["name"], {"name": m["name"]}))
            if local is None:
                return  # an unbound claim: a kubelet waits too; the next pass tries again
            mounts.append((local, m["mountPath"], m.get("readOnly", False)))
        # Each mount: make the mount point, bind the volume there, make it read-only if asked.
        script = "set -e\n" + "".join(
            'mkdir -p "${%d}"; mount --bind "${%d}" "${%d}"\n' % (i * 2 + 2, i * 2 + 1, i * 2 + 2)
            + ('mount -o remount,bind,ro "${%d}"\n' % (i * 2 + 2) if ro else "")
            for i, (_, _, ro) in enumerate(mounts)) + f'shift {len(mounts) * 2}\nexec "$@"\n'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        for local, target, _ in mounts:
            argv += [local, target]
        env = self.env_for(pod, container)
        if env is None:
            return
        log = open(os.path.join(poddir, "log"), "ab")
        proc = subprocess.Popen(argv + [self.weir] + cmd[1:], env=env, cwd=poddir,
                                stdout=log, stderr=log, start_new_session=True)
        self.procs[(ns, name)] = (proc, uid)
        self.sync_hosts()
        self.report(pod, proc, None, None)
        threading.Thread(target=self.wait, args=(pod, proc), daemon=True).start()

    def volume_dir(self, ns, poddir, vol):
        """The host directory behind a pod volume, or None while it cannot exist yet."""
        if "hostPath" in vol:
            return vol["hostPath"]["path"]
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = self.api.call("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}") or {}
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            pv = pv_name and self.api.call("GET", f"/api/v1/persistentvolumes/{pv_name}") or {}
            path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
            if path:
                os.makedirs(path, exist_ok=True)
            return path
        local = os.path.join(poddir, "volumes", vol["name"])
        os.makedirs(local, exist_ok=True)
        data = {}
        if "configMap" in vol:
            cm = self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{vol['configMap']['name']}") or {}
            data = cm.get("data") or {}
        elif "secret" in vol:
            secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{vol['secret']['secretName']}") or {}
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        for k, v in data.items():
            with open(os.path.join(local, k), "w") as f:
                f.write(v)
        return local

    def wait(self, pod, proc):
        code = proc.wait()
        if code < 0:
            code = 128 - code  # killed by a signal, reported as a kubelet does (137 for SIGKILL)
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        with self.lock:
            current = self.procs.get((ns, name))
            if not current or current[0] is not proc:
                return
            if pod["spec"].get("restartPolicy", "Always") == "Always":
                del self.procs[(ns, name)]
                fresh = self.api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
                if fresh and not fresh["metadata"].get("deletionTimestamp"):
                    self.start(fresh)
                return
            self.report(pod, None, code, "Completed" if code == 0 else "Error")

    def report(self, pod, proc, code, reason):
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        if proc is not None:
            phase, state, ready = "Running", {"running": {"startedAt": now()}}, True
        else:
            phase = "Succeeded" if code == 0 else "Failed"
            state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}}
            if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                # As a kubelet: the log's tail, at most 80 lines and 2048 bytes.
                path = os.path.join(self.workdir, "pods", ns, name, "log")
                try:
                    with open(path, "rb") as f:
                        tail = b"\n".join(f.read().splitlines()[-80:])[-2048:]
                    state["terminated"]["message"] = tail.decode("utf-8", "replace")
                except OSError:
                    pass
            ready = False
        cond = "True" if ready else "False"
        status = {"status": {
            "phase": phase, "podIP": pod_ip(ns, name), "hostIP": "127.0.0.1", "startTime": now(),
            "conditions": [{"type": t, "status": cond if t != "PodScheduled" else "True", "lastTransitionTime": now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": container["name"], "image": container.get("image", ""), "imageID": "",
                                   "ready": ready, "restartCount": 0, "started": ready, "state": state}],
        }}
        try:
            self.api.call("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", status, "application/merge-patch+json")
        except Exception as e:  # noqa: BLE001
            print(f"agent: status of {ns}/{name}: {e}", flush=True)

    def kill(self, key):
        proc, _ = self.procs.pop(key)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def loop(self):
        threading.Thread(target=self.heartbeat, daemon=True).start()
        while True:
            try:
                pods = self.api.call("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={self.node}") or {"items": []}
                seen = set()
                with self.lock:
                    for pod in pods["items"]:
                        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                        seen.add(key)
                        running = self.procs.get(key)
                        if pod["metadata"].get("deletionTimestamp"):
                            if running:
                                self.kill(key)
                            self.api.call("DELETE", f"/api/v1/namespaces/{key[0]}/pods/{key[1]}",
                                          {"gracePeriodSeconds": 0})
                            continue
                        if running and running[1] != pod["metadata"]["uid"]:
                            self.kill(key)
                            running = None
                        phase = (pod.get("status") or {}).get("phase")
                        if not running and phase in (None, "Pending"):
                            self.start(pod)
                    for key in [k for k in self.procs if k not in seen]:
                        self.kill(key)
                self.sync_hosts()
            except Exception as e:  # noqa: BLE001 - an API hiccup must not stop the agent
                print(f"agent: {e}", flush=True)
            time.sleep(0.3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="base URL of `kubectl proxy`")
    ap.add_argument("--node", default="weir-node")
    ap.add_argument("--weir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--kubeconfig", required=True)
    a = ap.parse_args()
    Agent(Api(a.proxy), a.node, os.path.abspath(a.weir), a.workdir, a.kubeconfig).loop()


if __name__ == "__main__":
    main()
