#!/usr/bin/env python3
"""A node agent for the e2e suite: runs the pods bound to one Node as Docker
containers, as a kubelet with dockershim would, and reports their status.

Why not the real kubelet: it also needs kube-proxy, cluster DNS and a CNI
set-up, and on these machines its pod sandboxes failed in runc (see
TEST-INFRA.md). This agent keeps to what the job's promise depends on: the
pod's own image, its security context, its limits (cgroups), volumes and
probes, one IP per pod on a Docker network, and real container exits.

What it honours, per pod:
- image (must be present: nothing can be pulled; a missing image is
  `ErrImageNeverPull`), command and args (command replaces the image's
  entrypoint), workingDir, env with `$(VAR)` references, Secret and
  ConfigMap `envFrom`/`valueFrom`, fieldRefs (metadata.name/namespace,
  status.podIP, spec.nodeName);
- runAsUser/runAsGroup/runAsNonRoot/fsGroup, readOnlyRootFilesystem,
  capabilities add/drop, allowPrivilegeEscalation: false;
- CPU and memory limits (`--cpus`, `--memory`: a container over its memory
  limit is OOM-killed and reported as `OOMKilled`), CPU requests as shares;
- volumes: configMap, secret (the service account token included),
  emptyDir, hostPath, persistentVolumeClaim (the bound PV's hostPath);
- httpGet and tcpSocket readiness, liveness and startup probes;
- restartPolicy (Always and OnFailure restart with the kubelet's back-off,
  10 s doubling to 5 min), terminationGracePeriodSeconds (SIGTERM, then
  SIGKILL), the termination message file (terminationMessagePath, read
  when the container ends) and terminationMessagePolicy FallbackToLogsOnError.
- Each pod gets an address on the network; `<service>.<namespace>.svc`
  resolves (Docker network aliases) to the pod a Service selects, as with a
  headless Service: there is no kube-proxy, so ClusterIPs are not routed.
  The API server is reached as KUBERNETES_SERVICE_HOST/PORT.

Anything else in a pod spec that would change how it runs (init or several
containers, host namespaces, privileged, exec probes) is refused on the
pod as `CreateContainerConfigError` with the field named, never ignored.

Talks to the API server through `kubectl proxy` on loopback.
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

LABEL = "weir-e2e.node"


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {args[0]}: {r.stderr.strip()}")
    return r.stdout


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


class Refused(Exception):
    """A pod this node cannot run as specified: (reason, message)."""


def quantity(text):
    """A Kubernetes quantity as a number (bytes, or cores for CPU)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text).strip())
    if not m:
        raise Refused("CreateContainerConfigError", f"bad quantity {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4}
    if unit not in units:
        raise Refused("CreateContainerConfigError", f"bad quantity {text!r}")
    return value * units[unit]


def expand(value, env):
    """$(VAR) references, as the kubelet expands them; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class Pod:
    """What the agent knows of one pod it runs."""

    def __init__(self, obj, ip):
        self.obj = obj
        self.ip = ip
        self.restarts = 0
        self.last_state = None
        self.ready = False
        self.started = False
        self.waiting = None  # (reason, message) while no container runs
        self.retry_at = 0.0
        self.container = None  # docker name of the current container
        self.started_at = None
        self.done = False  # terminated for good (restartPolicy)
        self.terminated = None
        self.reported = None
        self.prober = None

    @property
    def key(self):
        return self.obj["metadata"]["namespace"], self.obj["metadata"]["name"]


class Agent:
    def __init__(self, api, node, prefix, network, workdir, api_host, api_port):
        self.api, self.node, self.prefix, self.network = api, node, prefix, network
        self.workdir, self.api_host, self.api_port = workdir, api_host, api_port
        self.pods = {}  # (ns, name) -> Pod
        self.lock = threading.RLock()

    # ------------------------------------------------------------- the node

    def register(self):
        mem = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1])
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{mem}Ki", "pods": "110"}
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node,
                                                           "kubernetes.io/os": "linux"}}}
        if self.api.call("GET", f"/api/v1/nodes/{self.node}") is None:
            self.api.call("POST", "/api/v1/nodes", node)
        self.capacity = capacity

    def heartbeat(self):
        while True:
            status = {"status": {
                "capacity": self.capacity, "allocatable": self.capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "weir e2e docker agent", "lastHeartbeatTime": now(),
                                "lastTransitionTime": now()}],
                "addresses": [{"type": "InternalIP", "address": f"{self.prefix}.1"},
                              {"type": "Hostname", "address": self.node}],
                "nodeInfo": {"containerRuntimeVersion": "docker://" + docker("version", "-f", "{{.Server.Version}}",
                                                                             check=False).strip(),
                             "kubeletVersion": "v1.20.2-weir-e2e", "operatingSystem": "linux",
                             "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                             "kernelVersion": os.uname().release, "osImage": "docker", "kubeProxyVersion": ""},
            }}
            try:
                self.api.call("PATCH", f"/api/v1/nodes/{self.node}/status", status, "application/merge-patch+json")
            except Exception as e:  # noqa: BLE001 - keep beating
                print(f"agent {self.node}: heartbeat failed: {e}", flush=True)
            time.sleep(5)

    def free_ip(self):
        used = {p.ip for p in self.pods.values()}
        # Addresses held by containers this agent does not know (a previous run's).
        held = docker("network", "inspect", "-f", "{{range .Containers}}{{.IPv4Address}} {{end}}", self.network,
                      check=False)
        used |= {a.split("/")[0] for a in held.split()}
        for i in range(2, 255):
            ip = f"{self.prefix}.{i}"
            if ip not in used:
                return ip
        raise Refused("OutOfIPs", "no free pod address on this node")

    # ------------------------------------------------------ building a pod

    def get(self, path):
        return self.api.call("GET", path) or {}

    def refuse_unhonoured(self, spec, c):
        fields = []
        for f in ("initContainers", "ephemeralContainers"):
            if spec.get(f):
                fields.append(f"spec.{f}")
        if len(spec["containers"]) != 1:
            fields.append("spec.containers (only one container per pod)")
        for f in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(f):
                fields.append(f"spec.{f}")
        if (c.get("securityContext") or {}).get("privileged"):
            fields.append("securityContext.privileged")
        for p in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(p) or {}
            if probe and not ("httpGet" in probe or "tcpSocket" in probe):
                fields.append(f"{p} (only httpGet and tcpSocket)")
        for v in spec.get("volumes") or []:
            kinds = set(v) - {"name"}
            if not kinds <= {"configMap", "secret", "emptyDir", "hostPath", "persistentVolumeClaim"}:
                fields.append(f"volume {v['name']}: {', '.join(sorted(kinds))}")
        if fields:
            raise Refused("CreateContainerConfigError", "not honoured by the e2e node: " + "; ".join(fields))

    def env_for(self, pod, c):
        meta, ns = pod.obj["metadata"], pod.obj["metadata"]["namespace"]
        env = {"HOSTNAME": meta["name"], "KUBERNETES_SERVICE_HOST": self.api_host,
               "KUBERNETES_SERVICE_PORT": str(self.api_port)}

        def source(kind, name, key, optional):
            obj = self.api.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
            if obj is None:
                if optional:
                    return None
                raise Refused("CreateContainerConfigError", f"{kind[:-1]} \"{name}\" not found")
            data = obj.get("data") or {}
            if kind == "secrets":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            if key is None:
                return data
            if key not in data and not optional:
                raise Refused("CreateContainerConfigError", f"couldn't find key {key} in {kind[:-1]} {ns}/{name}")
            return data.get(key)

        for src in c.get("envFrom") or []:
            for kind, field in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
                ref = src.get(field)
                if ref:
                    env.update(source(kind, ref["name"], None, ref.get("optional")) or {})
        fields = {"metadata.name": meta["name"], "metadata.namespace": ns, "status.podIP": pod.ip,
                  "spec.nodeName": self.node, "metadata.uid": meta["uid"]}
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if not vf:
                value = expand(e.get("value", ""), env)
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, ref = ("secrets", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("configmaps",
                                                                                           vf["configMapKeyRef"])
                value = source(kind, ref["name"], ref["key"], ref.get("optional"))
                if value is None:
                    continue
            elif "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise Refused("CreateContainerConfigError", f"env {e['name']}: fieldPath {path} not honoured")
                value = fields[path]
            else:
                raise Refused("CreateContainerConfigError", f"env {e['name']}: valueFrom not honoured")
            env[e["name"]] = value
        return env

    def volume_dir(self, pod, vol, owner):
        """The host directory behind a pod volume; None while it cannot exist yet."""
        ns = pod.obj["metadata"]["namespace"]
        if "hostPath" in vol:
            path = vol["hostPath"]["path"]
            os.makedirs(path, exist_ok=True)
            return path
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = self.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
                return None
            path = ((self.get(f"/api/v1/persistentvolumes/{pv_name}").get("spec") or {}).get("hostPath") or {}).get(
                "path")
            if path:
                os.makedirs(path, exist_ok=True)
            return path
        local = os.path.join(self.workdir, "pods", ns, pod.obj["metadata"]["name"], pod.obj["metadata"]["uid"][:8],
                             "volumes", vol["name"])
        os.makedirs(local, exist_ok=True)
        data = None
        if "configMap" in vol:
            cm = self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{vol['configMap']['name']}")
            if cm is None and not vol["configMap"].get("optional"):
                return None
            data = (cm or {}).get("data") or {}
        elif "secret" in vol:
            secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{vol['secret']['secretName']}")
            if secret is None and not vol["secret"].get("optional"):
                return None
            data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
        source = vol.get("configMap") or vol.get("secret") or {}
        mode = source.get("defaultMode", 0o644)
        files = {k: (k, mode) for k in (data or {})}
        if source.get("items"):
            # Only the keys listed, at their paths; a listed key that is missing fails the mount.
            if any(i["key"] not in (data or {}) for i in source["items"]) and not source.get("optional"):
                return None
            files = {i["key"]: (i["path"], i.get("mode", mode)) for i in source["items"] if i["key"] in (data or {})}
        for k, (name, file_mode) in files.items():
            path = os.path.join(local, name)
            v = data[k]
            with open(path, "wb") as f:
                f.write(v if isinstance(v, bytes) else v.encode())
            os.chmod(path, file_mode)
        # As the kubelet does with fsGroup: the group owns it and may write.
        if owner is not None:
            for root, _, names in os.walk(local):
                for n in [root] + [os.path.join(root, f) for f in names]:
                    os.chown(n, 0, owner)
            os.chmod(local, 0o2775 if data is None else 0o2755)
        return local

    def docker_args(self, pod):
        spec = pod.obj["spec"]
        c = spec["containers"][0]
        self.refuse_unhonoured(spec, c)
        meta = pod.obj["metadata"]
        image = c.get("image", "")
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            raise Refused("ErrImageNeverPull", f"image {image!r} is not present on the node and nothing can be pulled")
        psc, csc = spec.get("securityContext") or {}, c.get("securityContext") or {}
        user = csc.get("runAsUser", psc.get("runAsUser"))
        group = csc.get("runAsGroup", psc.get("runAsGroup"))
        if user is None:
            configured = docker("image", "inspect", "-f", "{{.Config.User}}", image).strip()
            user = configured.split(":")[0] if configured else "0"
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and str(user) in ("0", "root"):
            raise Refused("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        fs_group = psc.get("fsGroup")
        args = ["run", "-d", "--name", pod.container, "--hostname", meta["name"][:63],
                "--network", self.network, "--ip", pod.ip,
                "--label", f"{LABEL}={self.node}", "--label", f"weir-e2e.pod={meta['namespace']}/{meta['name']}",
                "--label", f"weir-e2e.uid={meta['uid']}",
                "--user", f"{user}:{group}" if group is not None else str(user)]
        if fs_group is not None:
            args += ["--group-add", str(fs_group)]
        for alias in self.aliases(pod):
            args += ["--network-alias", alias]
        if csc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        caps = csc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap]
        if csc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if "memory" in limits:
            # No swap beyond the limit: over it, the kernel's OOM killer ends the container.
            mem = int(quantity(limits["memory"]))
            args += ["--memory", str(mem), "--memory-swap", str(mem)]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):.3f}"]
        if "cpu" in requests:
            args += ["--cpu-shares", str(max(2, int(quantity(requests["cpu"]) * 1024)))]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        args += ["--stop-timeout", str(grace)]
        if c.get("workingDir"):
            args += ["-w", c["workingDir"]]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m["name"])
            if vol is None:
                raise Refused("CreateContainerConfigError", f"volumeMount {m['name']}: no such volume")
            local = self.volume_dir(pod, vol, fs_group)
            if local is None:
                raise Refused("ContainerCreating", f"volume {m['name']} is not ready (unbound claim or missing source)")
            source = os.path.join(local, m["subPath"]) if m.get("subPath") else local
            args += ["-v", f"{source}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
        # As the kubelet does: a file the container may write its termination
        # message to, read when it ends.
        message = self.termination_log(pod)
        with open(message, "w"):
            pass
        os.chmod(message, 0o666)
        args += ["-v", f"{message}:{c.get('terminationMessagePath', '/dev/termination-log')}"]
        # Resolved once: each resolution reads the Secrets and ConfigMaps it refers to.
        env = self.env_for(pod, c)
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        command, cargs = c.get("command"), c.get("args") or []
        command = [expand(x, env) for x in command] if command else None
        cargs = [expand(x, env) for x in cargs]
        if command:
            args += ["--entrypoint", command[0], image] + command[1:] + cargs
        else:
            args += [image] + cargs
        return args

    def termination_log(self, pod):
        meta = pod.obj["metadata"]
        d = os.path.join(self.workdir, "pods", meta["namespace"], meta["name"], meta["uid"][:8])
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, f"termination-log-{pod.restarts}")

    def aliases(self, pod):
        meta = pod.obj["metadata"]
        ns, labels = meta["namespace"], meta.get("labels") or {}
        out = []
        for svc in (self.get(f"/api/v1/namespaces/{ns}/services").get("items") or []):
            sel = (svc.get("spec") or {}).get("selector") or {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                name = svc["metadata"]["name"]
                out += [f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}"]
        return out

    # --------------------------------------------------------- running pods

    def start(self, pod):
        meta = pod.obj["metadata"]
        pod.container = f"k8s_{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}_{pod.restarts}"
        docker("rm", "-f", pod.container, check=False)
        try:
            args = self.docker_args(pod)
            docker(*args)
        except Refused as r:
            pod.waiting = r.args
            pod.container = None
            pod.retry_at = time.time() + 2
            return
        except RuntimeError as e:
            pod.waiting = ("RunContainerError", str(e))
            pod.container = None
            pod.retry_at = time.time() + 5
            return
        pod.waiting, pod.started_at, pod.ready = None, now(), False
        pod.started = not pod.obj["spec"]["containers"][0].get("startupProbe")
        pod.prober = threading.Thread(target=self.probe, args=(pod, pod.container), daemon=True)
        pod.prober.start()

    def probe(self, pod, container):
        """Runs the container's probes for as long as it is the pod's container."""
        c = pod.obj["spec"]["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or [] if p.get("name")}
        probes = {k: c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe") if c.get(k)}
        if "readinessProbe" not in probes:
            pod.ready = True
        if not probes:
            return
        state = {k: {"ok": 0, "fail": 0, "next": time.time() + v.get("initialDelaySeconds", 0)}
                 for k, v in probes.items()}
        while pod.container == container and not pod.done:
            t = time.time()
            for kind, p in probes.items():
                s = state[kind]
                if t < s["next"] or (kind != "startupProbe" and not pod.started) or (
                        kind == "startupProbe" and pod.started):
                    continue
                s["next"] = t + p.get("periodSeconds", 10)
                ok = self.check(pod, p, ports)
                s["ok"], s["fail"] = (s["ok"] + 1, 0) if ok else (0, s["fail"] + 1)
                if kind == "startupProbe":
                    if ok:
                        pod.started = True
                    elif s["fail"] >= p.get("failureThreshold", 3):
                        self.kill_for_probe(pod, container, "startup")
                        return
                elif kind == "readinessProbe":
                    if ok and s["ok"] >= p.get("successThreshold", 1):
                        pod.ready = True
                    elif not ok and s["fail"] >= p.get("failureThreshold", 3):
                        pod.ready = False
                elif not ok and s["fail"] >= p.get("failureThreshold", 3):
                    self.kill_for_probe(pod, container, "liveness")
                    return
            time.sleep(0.2)

    def check(self, pod, p, ports):
        timeout = p.get("timeoutSeconds", 1)
        spec = p.get("httpGet") or p.get("tcpSocket")
        port = spec["port"]
        port = ports.get(port, port) if isinstance(port, str) else port
        try:
            if "tcpSocket" in p:
                socket.create_connection((pod.ip, int(port)), timeout=timeout).close()
                return True
            url = f"http://{pod.ip}:{port}{spec.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return 200 <= r.status < 400
        except Exception:  # noqa: BLE001 - any failure is a failed probe
            return False

    def kill_for_probe(self, pod, container, which):
        print(f"agent {self.node}: {which} probe failed for {pod.key[0]}/{pod.key[1]}; killing its container", flush=True)
        grace = pod.obj["spec"].get("terminationGracePeriodSeconds", 30)
        docker("stop", "-t", str(grace), container, check=False)

    def exited(self, pod, info):
        """The pod's container ended: restart it or end the pod, by its policy."""
        st = info["State"]
        code = st.get("ExitCode", 0)
        reason = "OOMKilled" if st.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        term = {"exitCode": code, "reason": reason, "startedAt": pod.started_at or now(), "finishedAt": now(),
                "containerID": "docker://" + info["Id"]}
        c = pod.obj["spec"]["containers"][0]
        try:
            with open(self.termination_log(pod), "rb") as f:
                written = f.read(4096).decode("utf-8", "replace")
        except OSError:
            written = ""
        if written:
            term["message"] = written
        elif code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            r = subprocess.run(["docker", "logs", "--tail", "80", pod.container], capture_output=True)
            tail = (r.stdout + r.stderr)[-2048:].decode("utf-8", "replace")
            if tail:
                term["message"] = tail
        # The container stays for `docker logs` until the pod goes.
        policy = pod.obj["spec"].get("restartPolicy", "Always")
        pod.ready = False
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            pod.last_state = {"terminated": term}
            backoff = min(300, 10 * 2 ** min(pod.restarts, 5))
            pod.restarts += 1
            pod.container = None
            pod.waiting = ("CrashLoopBackOff", f"back-off {backoff}s restarting failed container")
            pod.retry_at = time.time() + backoff
        else:
            pod.done, pod.terminated = True, term

    def report(self, pod):
        meta = pod.obj["metadata"]
        c = pod.obj["spec"]["containers"][0]
        running = pod.container is not None and not pod.done
        if pod.done:
            phase = "Succeeded" if pod.terminated["exitCode"] == 0 else "Failed"
            state = {"terminated": pod.terminated}
        elif running:
            phase, state = "Running", {"running": {"startedAt": pod.started_at}}
        else:
            phase = "Running" if pod.restarts else "Pending"
            reason, message = pod.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, "message": message}}
        ready = running and pod.ready
        cond = "True" if ready else "False"
        cs = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
              "restartCount": pod.restarts, "started": running and pod.started, "state": state}
        if pod.last_state:
            cs["lastState"] = pod.last_state
        status = {"status": {
            "phase": phase, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "hostIP": f"{self.prefix}.1",
            "conditions": [{"type": t, "status": cond if t not in ("PodScheduled", "Initialized") else "True"}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [cs]}}
        text = json.dumps(status, sort_keys=True)
        if text == pod.reported:
            return
        for cond_ in status["status"]["conditions"]:
            cond_["lastTransitionTime"] = now()
        status["status"]["startTime"] = pod.started_at or now()
        try:
            self.api.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", status,
                          "application/merge-patch+json")
            pod.reported = text
        except Exception as e:  # noqa: BLE001
            print(f"agent {self.node}: status of {pod.key}: {e}", flush=True)

    def remove(self, key, grace):
        """Stops a pod's container (SIGTERM, SIGKILL after `grace`), then forgets the pod."""
        pod = self.pods.pop(key, None)
        names = docker("ps", "-aq", "--filter", f"label=weir-e2e.pod={key[0]}/{key[1]}",
                       "--filter", f"label={LABEL}={self.node}", check=False).split()
        if pod and pod.container and not pod.done and grace > 0:
            docker("stop", "-t", str(grace), pod.container, check=False)
        if names:
            docker("rm", "-f", *names, check=False)

    def containers(self):
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}={self.node}").split()
        if not ids:
            return {}
        return {i["Name"].lstrip("/"): i for i in json.loads(docker("inspect", *ids))}

    def loop(self):
        self.register()
        threading.Thread(target=self.heartbeat, daemon=True).start()
        stopping = set()
        while True:
            try:
                items = self.get(f"/api/v1/pods?fieldSelector=spec.nodeName={self.node}").get("items") or []
                live = self.containers()
                seen = set()
                for obj in items:
                    meta = obj["metadata"]
                    key = (meta["namespace"], meta["name"])
                    seen.add(key)
                    pod = self.pods.get(key)
                    if pod and pod.obj["metadata"]["uid"] != meta["uid"]:
                        self.remove(key, 0)
                        pod = None
                    if meta.get("deletionTimestamp"):
                        if key not in stopping:
                            stopping.add(key)
                            grace = meta.get("deletionGracePeriodSeconds", 30)

                            def stop(key=key, grace=grace, ns=meta["namespace"], name=meta["name"]):
                                self.remove(key, grace)
                                self.api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                                              {"gracePeriodSeconds": 0})
                                stopping.discard(key)
                            threading.Thread(target=stop, daemon=True).start()
                        continue
                    if pod is None:
                        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                            continue  # ended before this agent started
                        pod = self.pods[key] = Pod(obj, self.free_ip())
                    pod.obj = obj
                    if pod.done:
                        pass
                    elif pod.container is None:
                        if time.time() >= pod.retry_at:
                            self.start(pod)
                    else:
                        info = live.get(pod.container)
                        if info is None:
                            pod.container = None  # removed behind the agent's back: start again
                        elif not info["State"]["Running"] and info["State"]["Status"] in ("exited", "dead"):
                            self.exited(pod, info)
                    self.report(pod)
                for key in [k for k in self.pods if k not in seen and k not in stopping]:
                    self.remove(key, 0)
                owned = {p.container for p in self.pods.values() if p.container}
                for name, info in live.items():
                    pod_label = info["Config"]["Labels"].get("weir-e2e.pod", "")
                    if tuple(pod_label.split("/", 1)) not in self.pods and name not in owned \
                            and tuple(pod_label.split("/", 1)) not in stopping:
                        docker("rm", "-f", name, check=False)
            except Exception as e:  # noqa: BLE001 - an API or docker hiccup must not stop the agent
                print(f"agent {self.node}: {e}", flush=True)
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="base URL of `kubectl proxy`")
    ap.add_argument("--node", required=True)
    ap.add_argument("--prefix", required=True, help="this node's pod addresses: PREFIX.2 to PREFIX.254")
    ap.add_argument("--network", required=True, help="the Docker network pods join")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--api-host", required=True, help="the API server's address as pods reach it")
    ap.add_argument("--api-port", required=True, type=int)
    a = ap.parse_args()
    if shutil.which("docker") is None:
        raise SystemExit("docker is not on PATH")
    Agent(Api(a.proxy), a.node, a.prefix, a.network, a.workdir, a.api_host, a.api_port).loop()


if __name__ == "__main__":
    main()
