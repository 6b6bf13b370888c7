"""Shared helpers for scripts/check-dashboard.py and scripts/demo.py (stdlib only).

Starts a local gateway -- Envoy on deploy/envoy.yaml (ports rewritten to free loopback ports),
flowgate, and flowgate-sim model servers -- and sends requests through it. Every child runs in
its own session with PDEATHSIG, is recorded in WORKDIR/pids, and is killed by Gateway.stop().
"""
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

LOCALHOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY_YAML = os.path.join(ROOT, "deploy", "envoy.yaml")

# Children and ports as the e2e test makes them (e2e/procs.py, stdlib only).
sys.path.insert(0, os.path.join(ROOT, "e2e"))
from procs import Procs, free_ports  # noqa: E402

def wait_until(what, fn, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f" ({last})" if last else ""))


def http_get(port, path, timeout=5.0):
    with urllib.request.urlopen(f"http://{LOCALHOST}:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def http_post_json(port, path, obj, timeout=5.0):
    req = urllib.request.Request(f"http://{LOCALHOST}:{port}{path}", data=json.dumps(obj).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def completion(port, workload=None, criticality=None, max_tokens=8, prompt="Hello", headers=None,
               timeout=60.0, stream=False):
    """POST /v1/completions through the gateway.

    Returns (status, drop reason, seconds to the end of the body, seconds to the response
    headers). With stream=True the model server sends its headers as soon as it takes the
    request, so the second time marks the dispatch (plus the hop), not the end of generation."""
    h = {"content-type": "application/json"}
    if workload is not None:
        ctx = {"workload_id": workload}
        if criticality is not None:
            ctx["criticality"] = criticality
        h["x-workload-context"] = json.dumps(ctx)
    h.update(headers or {})
    body = json.dumps({"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens,
                       "stream": stream})
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=body, headers=h)
        r = conn.getresponse()
        t_headers = time.monotonic() - t0
        r.read()
        return r.status, r.getheader("x-flowgate-drop-reason") or "", time.monotonic() - t0, t_headers
    except (OSError, http.client.HTTPException) as e:
        t = time.monotonic() - t0
        return 0, f"client error: {e}", t, t
    finally:
        conn.close()


def render_envoy(out_path, listen_port, admin_port, flowgate_port, src=ENVOY_YAML):
    """deploy/envoy.yaml with its three ports replaced (and the listener on loopback)."""
    with open(src) as f:
        text = f.read()
    subs = [
        ("socket_address: { address: 0.0.0.0, port_value: 8080 }",
         f"socket_address: {{ address: {LOCALHOST}, port_value: {listen_port} }}"),
        ("port_value: 9901 }", f"port_value: {admin_port} }}"),
        ("port_value: 9002 }", f"port_value: {flowgate_port} }}"),
    ]
    for old, new in subs:
        if text.count(old) != 1:
            raise RuntimeError(f"{src}: expected exactly one {old!r}")
        text = text.replace(old, new)
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


def parse_metrics(text):
    """Prometheus text -> ({family: type}, {sample name: [(labels dict, value)]})."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        samples.setdefault(m.group(1), []).append((labels, v))
    return types, samples


class Gateway:
    """Envoy (deploy/envoy.yaml) + flowgate + flowgate-sim servers on free loopback ports."""

    def __init__(self, workdir, flowgate, flowgate_sim, envoy=None):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.flowgate, self.flowgate_sim, self.envoy = flowgate, flowgate_sim, envoy
        self.procs = Procs(self.workdir)  # name -> child, WORKDIR/pids, WORKDIR/NAME.log
        self.sims = {}  # name -> port
        (self.listen_port, self.admin_port, self.grpc_port,
         self.metrics_port) = free_ports(4)

    # -- processes -----------------------------------------------------------------------------
    def _start(self, name, argv):
        return self.procs.start(name, argv)

    def check_alive(self):
        for name, p in self.procs.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name, n=20):
        return self.procs.log_tail(name, n)

    def stop(self):
        self.procs.stop_all()
        try:
            os.remove(os.path.join(self.workdir, "pids"))
        except OSError:
            pass

    def start_sim(self, name, *extra):
        (port,) = free_ports(1)
        self._start(name, [self.flowgate_sim, "--listen", f"{LOCALHOST}:{port}", "--engine", "vllm",
                           *extra])
        self.sims[name] = port
        wait_until(f"{name} /health", lambda: http_get(port, "/health", 1.0)[0] == 200, 20)
        return port

    def sim_force(self, name, **kv):
        return http_post_json(self.sims[name], "/admin/force", kv)

    def start_flowgate(self, config_body):
        """config_body: flowgate YAML without listen/metrics_listen (added here)."""
        cfg = os.path.join(self.workdir, "flowgate.yaml")
        with open(cfg, "w") as f:
            f.write(f"listen: {LOCALHOST}:{self.grpc_port}\n"
                    f"metrics_listen: {LOCALHOST}:{self.metrics_port}\n" + config_body)
        out = subprocess.run([self.flowgate, "check-config", cfg], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"flowgate check-config {cfg}:\n{out.stdout}{out.stderr}")
        self._start("flowgate", [self.flowgate, "serve", "--config", cfg])
        wait_until("flowgate /healthz",
                   lambda: http_get(self.metrics_port, "/healthz", 1.0)[0] == 200, 20)
        return cfg

    def start_envoy(self):
        cfg = render_envoy(os.path.join(self.workdir, "envoy.yaml"), self.listen_port,
                           self.admin_port, self.grpc_port)
        self._start("envoy", [self.envoy, "-c", cfg, "--base-id", str(os.getpid() % 60000 + 1000),
                              "--log-level", "warn"])

        def ready():
            self.check_alive()
            return http_get(self.admin_port, "/ready", 1.0)[1].strip() == "LIVE"
        wait_until("envoy /ready", ready, 30)
        return cfg

    def metrics(self):
        return parse_metrics(http_get(self.metrics_port, "/metrics")[1])

    def queued(self):
        _, s = self.metrics()
        return sum(v for _, v in s.get("inference_extension_flow_control_queue_size", []))
