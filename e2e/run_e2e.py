#!/usr/bin/env python3
"""Real-Envoy end-to-end test for flowgate (stdlib only).

Topology (everything on 127.0.0.1, ports picked by binding port 0):

    client --HTTP/1.1--> Envoy listener "main"  --ext_proc gRPC--> flowgate "main"  (queue 10000)
    client --HTTP/1.1--> Envoy listener "small" --ext_proc gRPC--> flowgate "small" (queue 4)
    Envoy router --> ORIGINAL_DST cluster (host taken from x-gateway-destination-endpoint,
                     which flowgate sets) --> upstream "up-a" | "up-b"  (e2e/upstream.py)

Both flowgate instances list both upstreams with max_inflight 1, so each
instance owns exactly two slots.  The tests hold slots with the upstream's
hold mechanism (x-test-hold + POST /_release) and wait on real signals
(upstream /_holding, flowgate's queue-size gauge, Envoy /ready): no sleeps.

Further phases in modules of their own, each with its own Envoy and flowgate: the TLS pair
(e2e/tls_pair.py, --no-tls skips it) and live reconfiguration, discovery-file edits and SIGHUP
reloads under load (e2e/live_config.py, --no-live skips it), and token usage of flowgate-sim
responses charged to workloads (e2e/cost.py, --no-cost skips it) with, beside it, a streamed
response whose body flowgate skips holding its slot to the end (e2e/held_stream.py, likewise).

Modes:
  (default)        full test; needs --flowgate
  --no-ext-proc    routing-only smoke test: Envoy without the ext_proc filter,
                   the client sets x-gateway-destination-endpoint itself.
  --validate-only  render configs and run `envoy --mode validate` only.

Prints one line per check and finishes with "N passed, M failed"; exit 1 if
any check failed.  Every wait has a deadline; all children are killed at exit.
"""
import argparse
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import tls_pair  # the TLS pair: Envoy -> flowgate over mTLS (e2e/tls_pair.py)
import live_config  # live reconfiguration: discovery edits + SIGHUP reloads (e2e/live_config.py)
import cost  # token usage of flowgate-sim responses charged to workloads (e2e/cost.py)
import held_stream  # a skipped response body still holds its slot to the end (e2e/held_stream.py)

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE_GAUGE = "inference_extension_flow_control_queue_size"
DEST_HEADER = "x-gateway-destination-endpoint"
LOCALHOST = "127.0.0.1"


class GlobalTimeout(Exception):
    pass


class SkipRest(Exception):
    """A setup step failed; remaining checks of the phase cannot run."""


# ---------------------------------------------------------------------------
# process management
# ---------------------------------------------------------------------------

_libc = None


def _pdeathsig():
    """preexec_fn: SIGKILL the child if the driver dies (Linux prctl)."""
    try:
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Procs:
    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = {}  # name -> Popen
        self.pidfile = os.path.join(workdir, "pids")

    def _write_pidfile(self):
        with open(self.pidfile, "w") as f:
            for p in self.procs.values():
                if p.poll() is None:
                    f.write(f"{p.pid}\n")

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig, env=env, close_fds=True,
        )
        log.close()
        self.procs[name] = p
        self._write_pidfile()
        return p

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def kill(self, name, sig=signal.SIGKILL, wait=10.0):
        p = self.procs.get(name)
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # own session => pgid == pid
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self._write_pidfile()

    def stop_all(self):
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM, wait=3.0)
        self._write_pidfile()

    def log_tail(self, name, n=30):
        path = os.path.join(self.workdir, f"{name}.log")
        try:
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# ---------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------

def http_req(port, method, path, headers=None, body=None, timeout=10.0):
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def get_json(port, path, timeout=5.0):
    st, _, data = http_req(port, "GET", path, timeout=timeout)
    if st != 200:
        raise RuntimeError(f"GET :{port}{path} -> {st}")
    return json.loads(data)


def wait_until(what, fn, timeout, interval=0.05):
    """Poll fn() until it returns a truthy value; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except (SkipRest, GlobalTimeout, KeyboardInterrupt):
            raise
        except Exception as e:  # the thing may not be up yet
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)  # poll interval of a readiness loop, not a substitute for a signal


class Req(threading.Thread):
    """One client request through Envoy, run in its own thread."""

    def __init__(self, port, test_id, workload, crit, hold=None, delay_ms=None,
                 dest=None, timeout=60.0, path=None, body=None):
        super().__init__(daemon=True, name=f"req-{test_id}")
        self.port = port
        self.test_id = test_id
        self.crit = crit
        self.headers = {
            "x-test-id": test_id,
            "x-workload-context": json.dumps({"workload_id": workload, "criticality": crit}),
        }
        if hold:
            self.headers["x-test-hold"] = hold
        if delay_ms:
            self.headers["x-test-delay-ms"] = str(delay_ms)
        if dest:
            self.headers[DEST_HEADER] = dest
        self.path = path or f"/v1/completions?id={test_id}"
        self.req_body = body if body is not None else b'{"prompt":"hi"}'
        self.timeout = timeout
        self.status = None
        self.resp_headers = {}
        self.body = b""
        self.error = None
        self.done_at = None

    def run(self):
        try:
            self.status, self.resp_headers, self.body = http_req(
                self.port, "POST", self.path, self.headers, body=self.req_body,
                timeout=self.timeout)
        except Exception as e:
            self.error = e
        self.done_at = time.monotonic()

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return {}

    def describe(self):
        if self.error is not None:
            return f"{self.test_id}: error {self.error!r}"
        reason = self.resp_headers.get("x-flowgate-drop-reason")
        return f"{self.test_id}: {self.status}" + (f" ({reason})" if reason else "")


def join_all(reqs, timeout):
    deadline = time.monotonic() + timeout
    for r in reqs:
        r.join(max(0.0, deadline - time.monotonic()))
    return [r for r in reqs if r.is_alive()]


# ---------------------------------------------------------------------------
# config rendering
# ---------------------------------------------------------------------------

def flowgate_config(listen_port, metrics_port, backend_ports, max_requests, ttl="30s", shards=1,
                    backends=None, extra="", weights=(0.4, 0.4, 0.2), scoring_extra="",
                    workloads_extra=""):
    wait_w, crit_w, rate_w = weights
    if backends is None:
        backends = "\n".join(
            f"  - address: {LOCALHOST}:{p}\n    max_inflight: 1" for p in backend_ports)
    return f"""# generated by e2e/run_e2e.py
listen: {LOCALHOST}:{listen_port}
metrics_listen: {LOCALHOST}:{metrics_port}
shards: {shards}
backends:
{backends}
queue:
  max_requests: {max_requests}
  max_bytes: 1GiB
  ttl: {ttl}
scoring:
  wait_weight: {wait_w}
  criticality_weight: {crit_w}
  rate_weight: {rate_w}
  wait_cap: 60s
  rate_cap: 100
  rate_window: 60s
  rescore_interval: 100ms
{scoring_extra}workloads:
  default_criticality: 3
  idle_timeout: 5m
  max_tracked: 100000
  caps: []
{workloads_extra}{extra}"""


def render_envoy_config(template_path, out_path, admin_port, listeners, ext_proc, access_log):
    """listeners: list of (name, listen_port, flowgate_grpc_port)."""
    with open(template_path) as f:
        tmpl = f.read()
    # The template holds three sections separated by marker lines; see envoy.yaml.tmpl.
    sections = {}
    cur = None
    for line in tmpl.splitlines(keepends=True):
        if line.startswith("#@@ "):
            cur = line[4:].strip()
            sections[cur] = ""
            continue
        if cur is not None:
            sections[cur] += line

    def sub(text, **kv):
        for k, v in kv.items():
            text = text.replace("${" + k + "}", str(v))
        assert "${" not in text, f"unrendered placeholder in:\n{text}"
        return text

    ext_proc_filter = sections["ext_proc_filter"] if ext_proc else ""
    lst = "".join(
        sub(sections["listener"], NAME=name, PORT=port, ACCESS_LOG=access_log,
            EXT_PROC_FILTER=sub(ext_proc_filter, CLUSTER=f"flowgate_ext_proc_{name}"))
        for name, port, _ in listeners)
    clusters = "".join(
        sub(sections["ext_proc_cluster"], CLUSTER=f"flowgate_ext_proc_{name}", GRPC_PORT=gport)
        for name, _, gport in listeners) if ext_proc else ""
    out = sub(sections["main"], ADMIN_PORT=admin_port, LISTENERS=lst, EXT_PROC_CLUSTERS=clusters)
    with open(out_path, "w") as f:
        f.write(out)
    return out_path


# ---------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------

class Harness:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        if os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir)
        os.makedirs(self.workdir)
        self.procs = Procs(self.workdir)
        self.results = []  # (name, ok, detail)
        self.started = time.monotonic()
        (self.admin_port, self.up_a, self.up_b, self.l_main, self.l_small,
         self.fg_main_grpc, self.fg_main_metrics, self.fg_small_grpc,
         self.fg_small_metrics, self.sim_a, self.sim_b, self.l_sat, self.fg_sat_grpc,
         self.fg_sat_metrics) = free_ports(14)
        self.upstreams = {"up-a": self.up_a, "up-b": self.up_b}
        self.sims = {"sim-a": self.sim_a, "sim-b": self.sim_b}
        self.sat_enabled = bool(args.flowgate_sim) and not args.no_sat
        self.envoy_cfg = None

    # -- reporting ---------------------------------------------------------
    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        tag = "PASS" if ok else "FAIL"
        print(f"[{tag}] {name}" + (f" -- {detail}" if detail else ""), flush=True)
        return ok

    def run_phase(self, title, fn):
        print(f"--- {title}", flush=True)
        started = time.monotonic()
        try:
            fn()
        except GlobalTimeout:
            raise
        except SkipRest as e:
            self.check(f"{title}: setup", False, str(e))
        except Exception as e:
            self.check(f"{title}: unexpected error", False, repr(e))
        finally:
            self.release_all_holds()
            # Phase times, so a run that nears --deadline shows where its time went.
            print(f"    ({title}: {time.monotonic() - started:.1f} s)", flush=True)

    # -- processes -----------------------------------------------------------
    def start_upstreams(self):
        for name, port in self.upstreams.items():
            self.procs.start(name, [sys.executable, os.path.join(HERE, "upstream.py"),
                                    "--port", str(port), "--name", name])
        for name, port in self.upstreams.items():
            wait_until(f"upstream {name} /_health", lambda p=port: get_json(p, "/_health"), 15)

    def write_envoy_config(self, ext_proc, suffix=""):
        listeners = [("main", self.l_main, self.fg_main_grpc)]
        if ext_proc:
            listeners.append(("small", self.l_small, self.fg_small_grpc))
            listeners.append(("sat", self.l_sat, self.fg_sat_grpc))
        path = os.path.join(self.workdir, f"envoy{suffix}.yaml")
        return render_envoy_config(
            self.args.envoy_template, path, self.admin_port, listeners, ext_proc,
            os.path.join(self.workdir, "envoy_access.log"))

    def validate_envoy_config(self, path, label):
        try:
            out = subprocess.run(
                [self.args.envoy, "--mode", "validate", "-c", path, "--disable-hot-restart",
                 "--log-level", "warn"],
                capture_output=True, text=True, timeout=60)
            ok = out.returncode == 0
            msg = (out.stdout + out.stderr).strip().splitlines()
            detail = msg[-1] if msg else f"rc={out.returncode}"
            if not ok:
                detail = "\n".join(msg[-15:])
        except subprocess.TimeoutExpired:
            ok, detail = False, "envoy --mode validate timed out"
        return self.check(f"envoy --mode validate ({label})", ok, detail)

    def start_envoy(self):
        self.procs.start("envoy", [
            self.args.envoy, "-c", self.envoy_cfg, "--disable-hot-restart",
            "--concurrency", "2", "--log-level", self.args.envoy_log_level,
        ])

        def ready():
            if not self.procs.alive("envoy"):
                raise SkipRest("envoy exited during startup:\n" + self.procs.log_tail("envoy"))
            st, _, body = http_req(self.admin_port, "GET", "/ready", timeout=2)
            return st == 200 and body.strip() == b"LIVE"

        wait_until("envoy admin /ready == LIVE", ready, 30)

    def start_flowgate(self, name, grpc_port, metrics_port, max_requests, config=None):
        cfg = os.path.join(self.workdir, f"flowgate-{name}.yaml")
        with open(cfg, "w") as f:
            f.write(config or flowgate_config(grpc_port, metrics_port, [self.up_a, self.up_b],
                                              max_requests, shards=self.args.shards))
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self.procs.start(f"flowgate-{name}", [self.args.flowgate, "serve", "--config", cfg], env=env)

    def start_pair(self, name, cfg, admin_port, listen_port, grpc_port, metrics_port):
        """A phase's own flowgate `flowgate-NAME` (config file `cfg`) and Envoy `envoy-NAME` (the
        e2e template, one listener `NAME` on `listen_port` in front of it); returns once flowgate
        is healthy and Envoy is LIVE."""
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.procs.start(f"flowgate-{name}", [self.args.flowgate, "serve", "--config", cfg], env=env)
        self.wait_flowgate(name, metrics_port)
        envoy_cfg = render_envoy_config(
            self.args.envoy_template, os.path.join(self.workdir, f"envoy-{name}.yaml"), admin_port,
            [(name, listen_port, grpc_port)], True, os.path.join(self.workdir, f"envoy-{name}_access.log"))
        self.procs.start(f"envoy-{name}", [self.args.envoy, "-c", envoy_cfg, "--disable-hot-restart",
                                           "--concurrency", "2", "--log-level", self.args.envoy_log_level])

        def ready():
            if not self.procs.alive(f"envoy-{name}"):
                raise SkipRest(f"envoy-{name} exited during startup:\n" + self.procs.log_tail(f"envoy-{name}"))
            st, _, body = http_req(admin_port, "GET", "/ready", timeout=2)
            return st == 200 and body.strip() == b"LIVE"

        wait_until(f"envoy-{name} admin /ready == LIVE", ready, 30)

    def wait_flowgate(self, name, metrics_port):
        def healthy():
            if not self.procs.alive(f"flowgate-{name}"):
                raise SkipRest(f"flowgate-{name} exited during startup:\n"
                               + self.procs.log_tail(f"flowgate-{name}"))
            st, _, _ = http_req(metrics_port, "GET", "/healthz", timeout=2)
            return st == 200

        wait_until(f"flowgate-{name} /healthz", healthy, 30)

    # -- observation ---------------------------------------------------------
    def queue_size(self, metrics_port):
        """Sum of all series of the queue-size gauge, or None if absent."""
        st, _, body = http_req(metrics_port, "GET", "/metrics", timeout=3)
        if st != 200:
            raise RuntimeError(f"/metrics -> {st}")
        total, seen = 0.0, False
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("#") or not line.startswith(QUEUE_GAUGE):
                continue
            rest = line[len(QUEUE_GAUGE):]
            if rest and rest[0] not in "{ \t":
                continue  # another metric with this prefix
            if "}" in rest:
                rest = rest[rest.rindex("}") + 1:]
            parts = rest.split()
            if parts:
                total += float(parts[0])
                seen = True
        return total if seen else None

    def wait_queue(self, metrics_port, n, timeout=15, label=""):
        last = [None]

        def pred():
            last[0] = self.queue_size(metrics_port)
            return last[0] is not None and last[0] == n

        try:
            wait_until(f"queue gauge {label} == {n}", pred, timeout)
        except TimeoutError as e:
            raise SkipRest(f"{e}; last value {last[0]}")

    def reset_upstreams(self):
        for p in self.upstreams.values():
            http_req(p, "POST", "/_reset", timeout=5)

    def upstream_logs(self):
        return {name: get_json(p, "/_log") for name, p in self.upstreams.items()}

    def holding(self):
        return {name: get_json(p, "/_holding")["tokens"] for name, p in self.upstreams.items()}

    def wait_holding(self, tokens, timeout=15):
        want = sorted(tokens)
        seen = [None]

        def pred():
            h = self.holding()
            seen[0] = h
            return sorted(t for ts in h.values() for t in ts) == want

        try:
            wait_until(f"upstreams holding {want}", pred, timeout)
        except TimeoutError as e:
            raise SkipRest(f"{e}; holding now {seen[0]}")
        return seen[0]

    def release(self, token):
        for p in self.upstreams.values():
            http_req(p, "POST", f"/_release?token={token}", timeout=5)

    def release_all_holds(self):
        for p in self.upstreams.values():
            try:
                http_req(p, "POST", "/_release?all=1", timeout=5)
            except Exception:
                pass

    # -- scenarios -------------------------------------------------------------
    def phase_concurrent(self):
        """a. N concurrent mixed-criticality requests all served; both upstreams used."""
        self.reset_upstreams()
        n = self.args.concurrent
        reqs = [Req(self.l_main, f"a-{i}", f"wl-a-{i % 4}", (i % 5) + 1, delay_ms=20)
                for i in range(n)]
        for r in reqs:
            r.start()
        hung = join_all(reqs, 90)
        bad = [r.describe() for r in reqs if r.status != 200]
        self.check(f"a1 {n} concurrent mixed-criticality requests -> 200",
                   not hung and not bad,
                   f"{len(bad)} non-200, e.g. {bad[:5]}" if bad else f"{n}/{n} ok")
        used = {}
        for r in reqs:
            u = r.json().get("upstream")
            if u:
                used[u] = used.get(u, 0) + 1
        self.check("a2 both upstreams used", set(used) == set(self.upstreams), f"per upstream: {used}")
        logs = self.upstream_logs()
        maxc = {n_: lg["max_concurrent"] for n_, lg in logs.items()}
        seen = sum(len(lg["entries"]) for lg in logs.values())
        self.check("a3 per-backend concurrency never exceeded max_inflight=1",
                   seen == n and all(v <= 1 for v in maxc.values()),
                   f"max concurrent seen: {maxc}, requests reaching upstreams: {seen}/{n}")
        wrong = []
        for name, lg in logs.items():
            want = f"{LOCALHOST}:{self.upstreams[name]}"
            for e in lg["entries"]:
                if e["destination"] != want:
                    wrong.append((name, e["test_id"], e["destination"]))
        self.check(f"a4 upstreams saw {DEST_HEADER} == their own address", seen and not wrong,
                   f"mismatches: {wrong[:3]}" if wrong else f"all {seen} match")

    def phase_priority(self):
        """b. A crit-5 request queued after crit-1 requests is dispatched first."""
        self.reset_upstreams()
        holds = [Req(self.l_main, f"b-hold-{i}", "wl-hold", 3, hold=f"b-hold-{i}") for i in (1, 2)]
        for r in holds:
            r.start()
        h = self.wait_holding(["b-hold-1", "b-hold-2"])
        self.check("b1 two held requests occupy both backends",
                   all(len(v) == 1 for v in h.values()), f"holding: {h}")
        k = 4
        lows = [Req(self.l_main, f"b-low-{i}", "wl-low", 1) for i in range(k)]
        for r in lows:
            r.start()
        self.wait_queue(self.fg_main_metrics, k, label="main")
        high = Req(self.l_main, "b-high", "wl-high", 5)
        high.start()
        self.wait_queue(self.fg_main_metrics, k + 1, label="main")
        # Free exactly one slot; everything queued drains through it one at a
        # time, so that upstream's start order is flowgate's dispatch order.
        first_up = next(n for n, toks in h.items() if toks)
        self.release(h[first_up][0])
        queued = lows + [high]
        hung = join_all(queued, 30)
        log = self.upstream_logs()[first_up]["entries"]
        order = [e["test_id"] for e in sorted(log, key=lambda e: e["seq"])
                 if e["test_id"] and (e["test_id"].startswith("b-low") or e["test_id"] == "b-high")]
        ok = bool(order) and order[0] == "b-high" and len(order) == k + 1
        self.check("b2 crit-5 started before every queued crit-1", ok,
                   f"start order on {first_up}: {order}" + (f"; hung: {[r.test_id for r in hung]}" if hung else ""))
        other = next(n for n in h if n != first_up)
        self.release(h[other][0])
        hung = join_all(holds + queued, 30)
        bad = [r.describe() for r in holds + queued if r.status != 200]
        self.check("b3 all priority-phase requests served 200", not hung and not bad,
                   f"bad: {bad}" if bad else f"{len(holds + queued)} ok")

    def phase_full_queue(self):
        """c. Full queue -> 429 capacity for a lower-criticality arrival; displacement by higher."""
        self.reset_upstreams()
        port, metrics = self.l_small, self.fg_small_metrics
        holds = [Req(port, f"c-hold-{i}", "wl-hold", 3, hold=f"c-hold-{i}") for i in (1, 2)]
        for r in holds:
            r.start()
        self.wait_holding(["c-hold-1", "c-hold-2"])
        qmax = self.args.small_queue
        fill = [Req(port, f"c-q-{i}", f"wl-fill-{i}", 3) for i in range(qmax)]
        for r in fill:
            r.start()
        self.wait_queue(metrics, qmax, label="small")
        over = Req(port, "c-over", "wl-over", 1, timeout=15)
        over.start()
        over.join(20)
        reason = over.resp_headers.get("x-flowgate-drop-reason")
        self.check("c1 full queue rejects crit-1 arrival with 429 capacity",
                   over.status == 429 and reason == "capacity",
                   over.describe() + f", retry-after={over.resp_headers.get('retry-after')}")
        self.check("c2 429 carries retry-after", bool(over.resp_headers.get("retry-after")),
                   f"retry-after={over.resp_headers.get('retry-after')!r}")
        # displacement: a crit-5 arrival pushes out one queued crit-3
        high = Req(port, "c-high", "wl-high", 5)
        high.start()
        try:
            wait_until("a queued crit-3 request to be displaced",
                       lambda: any(not r.is_alive() for r in fill), 15)
        except TimeoutError:
            pass
        gone = [r for r in fill if not r.is_alive()]
        disp_ok = (len(gone) == 1 and gone[0].status == 429
                   and gone[0].resp_headers.get("x-flowgate-drop-reason") == "displaced")
        self.check("c3 crit-5 arrival on full queue displaces one crit-3 (429 displaced)", disp_ok,
                   f"finished: {[r.describe() for r in gone]}")
        self.release("c-hold-1")
        self.release("c-hold-2")
        rest = holds + [high] + [r for r in fill if r not in gone]
        hung = join_all(rest, 30)
        bad = [r.describe() for r in rest if r.status != 200]
        self.check("c4 held, crit-5 and remaining queued requests served 200", not hung and not bad,
                   f"bad: {bad}" if bad else f"{len(rest)} ok")

    def phase_drained(self):
        """d. The queue-size gauge returns to 0 on both flowgates."""
        vals = {}

        def pred():
            vals["main"] = self.queue_size(self.fg_main_metrics)
            vals["small"] = self.queue_size(self.fg_small_metrics)
            return vals["main"] == 0 and vals["small"] == 0

        try:
            wait_until("queue gauges == 0", pred, 15)
            ok = True
        except TimeoutError:
            ok = False
        self.check(f"d1 {QUEUE_GAUGE} back to 0", ok, f"sum over series: {vals}")

    def phase_envoy_kill(self):
        """e. SIGKILL Envoy with requests in flight and queued; restart; no leaked slots."""
        self.reset_upstreams()
        port = self.l_main
        holds = [Req(port, f"e-hold-{i}", "wl-hold", 3, hold=f"e-hold-{i}", timeout=30) for i in (1, 2)]
        for r in holds:
            r.start()
        self.wait_holding(["e-hold-1", "e-hold-2"])
        queued = [Req(port, f"e-q-{i}", "wl-q", (i % 5) + 1, timeout=30) for i in range(4)]
        for r in queued:
            r.start()
        self.wait_queue(self.fg_main_metrics, len(queued), label="main")
        self.procs.kill("envoy", signal.SIGKILL)
        hung = join_all(holds + queued, 20)
        failed = [r for r in holds + queued if r.status is None]
        self.check("e1 in-flight/queued clients cut off by Envoy SIGKILL",
                   not hung and len(failed) == len(holds + queued),
                   f"{len(failed)}/{len(holds + queued)} got a connection error")
        self.release("e-hold-1")
        self.release("e-hold-2")
        try:
            self.wait_queue(self.fg_main_metrics, 0, timeout=15, label="main")
            ok, detail = True, "queue gauge 0"
        except SkipRest as e:
            ok, detail = False, str(e)
        self.check("e2 flowgate dropped the dead streams' queued requests", ok, detail)
        self.start_envoy()
        self.reset_upstreams()
        holds2 = [Req(port, f"e2-hold-{i}", "wl-hold", 3, hold=f"e2-hold-{i}", timeout=30) for i in (1, 2)]
        for r in holds2:
            r.start()
        try:
            h = self.wait_holding(["e2-hold-1", "e2-hold-2"], timeout=20)
            ok, detail = all(len(v) == 1 for v in h.values()), f"holding: {h}"
        except SkipRest as e:
            ok, detail = False, f"slot leaked? {e}"
        self.check("e3 both backend slots free after Envoy restart", ok, detail)
        self.release("e2-hold-1")
        self.release("e2-hold-2")
        n = 10
        batch = [Req(port, f"e-batch-{i}", f"wl-e-{i % 3}", (i % 5) + 1, delay_ms=10, timeout=30)
                 for i in range(n)]
        for r in batch:
            r.start()
        hung = join_all(holds2 + batch, 40)
        bad = [r.describe() for r in holds2 + batch if r.status != 200]
        self.check(f"e4 fresh batch of {n} after restart all 200", not hung and not bad,
                   f"bad: {bad}" if bad else f"{n + 2} ok")

    def phase_routing_only(self):
        """--no-ext-proc: the client picks the backend via the destination header."""
        self.reset_upstreams()
        names = list(self.upstreams)
        n = self.args.concurrent
        reqs = []
        for i in range(n):
            name = names[i % 2]
            reqs.append(Req(self.l_main, f"r-{i}", f"wl-r-{i % 3}", (i % 5) + 1, delay_ms=10,
                            dest=f"{LOCALHOST}:{self.upstreams[name]}"))
        for r in reqs:
            r.start()
        hung = join_all(reqs, 60)
        bad = [r.describe() for r in reqs if r.status != 200]
        self.check(f"r1 {n} concurrent requests through Envoy -> 200", not hung and not bad,
                   f"bad: {bad[:5]}" if bad else f"{n}/{n} ok")
        mis = []
        for i, r in enumerate(reqs):
            got = r.json().get("upstream")
            if got != names[i % 2]:
                mis.append((r.test_id, names[i % 2], got))
        self.check("r2 ORIGINAL_DST routed every request to the header's endpoint", not mis,
                   f"mismatches: {mis[:5]}" if mis else
                   "per upstream: " + str({u: sum(1 for r in reqs if r.json().get('upstream') == u) for u in names}))
        logs = self.upstream_logs()
        counts = {k: len(v["entries"]) for k, v in logs.items()}
        self.check("r3 both upstreams logged requests (start-order log works)",
                   all(c == n // 2 for c in counts.values()), f"logged: {counts}")
        # hold mechanism sanity: a held request blocks until released
        held = Req(self.l_main, "r-hold", "wl", 3, hold="r-hold",
                   dest=f"{LOCALHOST}:{self.up_a}")
        held.start()
        try:
            self.wait_holding(["r-hold"])
            blocked = held.is_alive()
        except SkipRest:
            blocked = False
        self.release("r-hold")
        held.join(10)
        self.check("r4 upstream hold/release works through Envoy", blocked and held.status == 200,
                   held.describe())
        # kill/restart mechanics used by phase e: SIGKILL mid-request, restart on the same ports
        held = Req(self.l_main, "r-kill", "wl", 3, hold="r-kill", dest=f"{LOCALHOST}:{self.up_b}")
        held.start()
        self.wait_holding(["r-kill"])
        self.procs.kill("envoy", signal.SIGKILL)
        held.join(15)
        self.release("r-kill")
        cut = held.status is None and held.error is not None
        self.start_envoy()
        after = Req(self.l_main, "r-after", "wl", 3, dest=f"{LOCALHOST}:{self.up_a}")
        after.start()
        after.join(15)
        self.check("r5 Envoy SIGKILL cuts the client; restart on same ports serves again",
                   cut and after.status == 200, f"{held.describe()}; {after.describe()}")

    # -- saturation (flowgate-sim backends) ------------------------------------
    # A third flowgate, "sat", has the two flowgate-sim servers as backends with
    # no concurrency cap (max_inflight 0) and the utilization detector: it may send
    # to a sim only while the sim's scraped /metrics say it has room. The sims'
    # /admin/force and /admin/metrics endpoints make a sim look full or make its
    # metrics page hang; every wait polls flowgate's /api/v1/backends, its
    # /metrics or the sims' /admin/stats with a deadline.
    SAT_STALENESS_MS = 300
    SAT_METRICS = [
        "flowgate_backend_saturation", "flowgate_backend_waiting",
        "flowgate_backend_kv_cache_usage", "flowgate_backend_metrics_age_seconds",
        "flowgate_scrapes_total", "flowgate_stale_backends",
        "inference_extension_flow_control_pool_saturation",
    ]
    SAT_PER_BACKEND = SAT_METRICS[:5]

    def sat_config(self):
        a, b = (f"{LOCALHOST}:{p}" for p in (self.sim_a, self.sim_b))
        # sim-a spells out engine, sim-b the metrics URL; each leaves the other default.
        backends = (f"  - address: {a}\n    max_inflight: 0\n    engine: vllm\n"
                    f"  - address: {b}\n    max_inflight: 0\n    metrics: http://{b}/metrics")
        extra = f"""saturation:
  detector: utilization
  scrape_interval: 50ms
  scrape_timeout: 200ms
  queue_depth_threshold: {self.args.sat_threshold}
  kv_cache_threshold: 0.8
  staleness: {self.SAT_STALENESS_MS}ms
"""
        return flowgate_config(self.fg_sat_grpc, self.fg_sat_metrics, [], 10000,
                               shards=self.args.shards, backends=backends, extra=extra)

    def sim_addr(self, name):
        return f"{LOCALHOST}:{self.sims[name]}"

    def sim_post(self, name, path, obj):
        st, _, data = http_req(self.sims[name], "POST", path,
                               {"content-type": "application/json"},
                               body=json.dumps(obj).encode() if obj is not None else b"",
                               timeout=5)
        if st != 200:
            raise RuntimeError(f"POST {name}{path} -> {st}: {data[:200]!r}")

    def sim_force(self, name, **kv):
        self.sim_post(name, "/admin/force", kv)

    def sim_mode(self, name, mode):
        self.sim_post(name, "/admin/metrics", {"mode": mode})

    def sim_stats(self, name):
        return get_json(self.sims[name], "/admin/stats")

    def sim_totals(self):
        return {n: self.sim_stats(n)["requests_total"] for n in self.sims}

    def sat_reset_sims(self):
        for n in self.sims:
            self.sim_post(n, "/admin/reset", None)

    def sat_clear_sims(self):
        """Back to live, healthy metrics on both sims (best effort)."""
        for n in self.sims:
            for fn in (lambda: self.sim_force(n), lambda: self.sim_mode(n, "ok")):
                try:
                    fn()
                except Exception:
                    pass

    def sat_backends(self):
        """GET /api/v1/backends on sat, as {sim name: object} (plus the raw list)."""
        raw = get_json(self.fg_sat_metrics, "/api/v1/backends")
        by_addr = {o.get("address"): o for o in raw} if isinstance(raw, list) else {}
        return {n: by_addr.get(self.sim_addr(n)) for n in self.sims}, raw

    @staticmethod
    def parse_metrics(text):
        """Prometheus text -> list of (name, {label: value}, float)."""
        out = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            labels = {}
            if "{" in line and line.index("{") < (line.index(" ") if " " in line else len(line)):
                name = line[:line.index("{")]
                body, rest = line[line.index("{") + 1:].rsplit("}", 1)
                i = 0
                while i < len(body):
                    eq = body.index("=", i)
                    key = body[i:eq].strip().lstrip(",").strip()
                    j = eq + 2  # skip ="
                    val = []
                    while body[j] != '"':
                        if body[j] == "\\":
                            j += 1
                        val.append(body[j])
                        j += 1
                    labels[key] = "".join(val)
                    i = j + 1
                    while i < len(body) and body[i] in ", ":
                        i += 1
            else:
                name, _, rest = line.partition(" ")
            parts = rest.split()
            try:
                out.append((name, labels, float(parts[0])))
            except (IndexError, ValueError):
                continue
        return out

    def sat_metrics(self):
        st, _, body = http_req(self.fg_sat_metrics, "GET", "/metrics", timeout=3)
        if st != 200:
            raise RuntimeError(f"sat /metrics -> {st}")
        return self.parse_metrics(body.decode(errors="replace"))

    def sat_fresh(self, b):
        return (b is not None and isinstance(b.get("saturation"), (int, float))
                and b["saturation"] < 1 and isinstance(b.get("metrics_age_ms"), (int, float))
                and b["metrics_age_ms"] < self.SAT_STALENESS_MS)

    def sat_wait_backends(self, what, pred, timeout=10):
        """Poll /api/v1/backends until pred({name: obj}) holds; returns (view, seconds)."""
        seen = [None]
        t0 = time.monotonic()

        def f():
            seen[0], _ = self.sat_backends()
            return pred(seen[0])

        try:
            wait_until(what, f, timeout, interval=0.02)
        except TimeoutError as e:
            raise SkipRest(f"{e}; backends now {seen[0]}")
        return seen[0], time.monotonic() - t0

    def sat_batch(self, tag, n, timeout=30):
        body = json.dumps({"prompt": "hello sim", "max_tokens": 4}).encode()
        reqs = [Req(self.l_sat, f"{tag}-{i}", f"wl-{tag}-{i % 3}", (i % 5) + 1, body=body,
                    path="/v1/completions", timeout=timeout) for i in range(n)]
        for r in reqs:
            r.start()
        hung = join_all(reqs, timeout + 5)
        bad = [r.describe() for r in reqs if r.status != 200]
        served = {}
        for r in reqs:
            m = r.json().get("model")
            served[m] = served.get(m, 0) + 1
        return reqs, hung, bad, served

    def run_sat_phases(self):
        try:
            self.run_phase("sat setup", self.phase_sat_setup)
        finally:
            self.sat_clear_sims()
        if not self.sat_up:
            return
        for title, fn in (("sat-a. healthy sims share the load", self.phase_sat_a),
                          ("sat-b. a saturated sim gets nothing", self.phase_sat_b),
                          ("sat-c. stale metrics", self.phase_sat_c),
                          ("sat-d. all saturated: held, released by priority", self.phase_sat_d),
                          ("sat-e. backends API and metric names", self.phase_sat_e)):
            try:
                self.run_phase(title, fn)
            finally:
                self.sat_clear_sims()

    sat_up = False

    def phase_sat_setup(self):
        for name, port in self.sims.items():
            self.procs.start(name, [
                self.args.flowgate_sim, "--listen", f"{LOCALHOST}:{port}", "--engine", "vllm",
                "--model", name, "--max-num-seqs", "4", "--decode-step-ms", "2",
                "--prefill-us-per-token", "20"])
        for name, port in self.sims.items():
            def up(n=name, p=port):
                if not self.procs.alive(n):
                    raise SkipRest(f"{n} exited during startup:\n" + self.procs.log_tail(n))
                return http_req(p, "GET", "/health", timeout=2)[0] == 200
            wait_until(f"{name} /health", up, 15)
        self.start_flowgate("sat", self.fg_sat_grpc, self.fg_sat_metrics, 10000,
                            config=self.sat_config())
        self.wait_flowgate("sat", self.fg_sat_metrics)
        view, dt = self.sat_wait_backends(
            "both sims listed and fresh in /api/v1/backends",
            lambda v: all(self.sat_fresh(b) for b in v.values()), timeout=10)
        self.sat_up = self.check("sat0 flowgate sat up; both sims fresh in /api/v1/backends", True,
                                 f"after {dt:.2f}s: " + ", ".join(
                                     f"{n} sat={b['saturation']} age={b['metrics_age_ms']}ms"
                                     for n, b in view.items()))

    def phase_sat_a(self):
        self.sat_reset_sims()
        n = self.args.sat_requests
        t0 = time.monotonic()
        reqs, hung, bad, served = self.sat_batch("sa", n)
        dt = time.monotonic() - t0
        self.check(f"sat-a1 {n} concurrent requests through Envoy -> 200", not hung and not bad,
                   f"bad: {bad[:5]}" if bad else f"{n}/{n} ok in {dt:.2f}s")
        tot = self.sim_totals()
        self.check("sat-a2 both sims served some (per /admin/stats)",
                   all(v > 0 for v in tot.values()) and sum(tot.values()) == n,
                   f"requests_total {tot}; by response model {served}")

    def phase_sat_b(self):
        thr = self.args.sat_threshold
        n = self.args.sat_requests
        for label, force in (("waiting", {"waiting": thr}), ("kv_cache_usage", {"kv_cache_usage": 0.95})):
            self.sim_force("sim-a", **force)
            _, dt = self.sat_wait_backends(
                f"sim-a saturation >= 1 with forced {label}",
                lambda v: v["sim-a"] is not None and v["sim-a"]["saturation"] >= 1)
            self.sat_reset_sims()
            reqs, hung, bad, served = self.sat_batch(f"sb-{label[:2]}", n)
            tot = self.sim_totals()
            self.check(f"sat-b {label}: sim-a forced {force} -> all {n} -> 200 via sim-b, sim-a got 0",
                       not hung and not bad and tot["sim-a"] == 0 and tot["sim-b"] == n,
                       f"saturated after {dt:.2f}s; requests_total {tot}"
                       + (f"; bad: {bad[:5]}" if bad else ""))
            self.sim_force("sim-a")
            self.sat_wait_backends("sim-a fresh again", lambda v: self.sat_fresh(v["sim-a"]))

    def scrape_counts(self, name):
        """flowgate_scrapes_total for one sim, by result."""
        addr = self.sim_addr(name)
        out = {}
        for m, labels, v in self.sat_metrics():
            if m == "flowgate_scrapes_total" and addr in labels.get("backend", ""):
                out[labels.get("result", "?")] = out.get(labels.get("result", "?"), 0) + v
        return out

    def phase_sat_c(self):
        n = self.args.sat_requests
        before = self.scrape_counts("sim-b")
        self.sim_mode("sim-b", "stall")
        view, dt = self.sat_wait_backends(
            "sim-b stale (saturation >= 1 or metrics_age_ms > staleness)",
            lambda v: v["sim-b"] is not None and (
                v["sim-b"]["saturation"] >= 1 or v["sim-b"]["metrics_age_ms"] > self.SAT_STALENESS_MS))
        stale = [None]

        def stale_gauge():
            stale[0] = sum(v for m, _, v in self.sat_metrics() if m == "flowgate_stale_backends")
            return stale[0] == 1

        try:
            wait_until("flowgate_stale_backends == 1", stale_gauge, 5)
            ok = True
        except TimeoutError:
            ok = False
        self.check("sat-c1 sim-b metrics stalled -> stale in /api/v1/backends; flowgate_stale_backends 1",
                   ok and self.sat_fresh(view["sim-a"]),
                   f"after {dt:.2f}s: sim-b {view['sim-b']}; sim-a fresh: {self.sat_fresh(view['sim-a'])}; "
                   f"flowgate_stale_backends={stale[0]}")
        stale_ok = self.scrape_counts("sim-b").get("ok", 0)  # no good scrape from here on
        self.sat_reset_sims()
        reqs, hung, bad, served = self.sat_batch("sc", n)
        tot = self.sim_totals()
        self.check(f"sat-c2 all {n} -> 200 via sim-a; stale sim-b got 0",
                   not hung and not bad and tot["sim-b"] == 0 and tot["sim-a"] == n,
                   f"requests_total {tot}" + (f"; bad: {bad[:5]}" if bad else ""))
        after = self.scrape_counts("sim-b")
        fails = {k: v - before.get(k, 0) for k, v in after.items() if k != "ok"}
        self.check("sat-c3 flowgate_scrapes_total shows failed scrapes of sim-b, no good ones",
                   sum(fails.values()) > 0 and after.get("ok", 0) == stale_ok,
                   f"new non-ok since stall: {fails}; ok once stale/after batch "
                   f"{stale_ok}/{after.get('ok')}")
        self.sim_mode("sim-b", "ok")
        _, dt = self.sat_wait_backends("sim-b fresh again", lambda v: self.sat_fresh(v["sim-b"]))
        self.sat_reset_sims()
        reqs, hung, bad, served = self.sat_batch("sc2", n)
        tot = self.sim_totals()
        self.check(f"sat-c4 sim-b metrics restored -> fresh after {dt:.2f}s; takes requests again",
                   not hung and not bad and tot["sim-b"] > 0 and sum(tot.values()) == n,
                   f"requests_total {tot}" + (f"; bad: {bad[:5]}" if bad else ""))

    def phase_sat_d(self):
        thr = self.args.sat_threshold
        for n in self.sims:
            self.sim_force(n, waiting=thr)
        self.sat_wait_backends("both sims saturated",
                               lambda v: all(b is not None and b["saturation"] >= 1 for b in v.values()))
        self.sat_reset_sims()
        order = [1, 2, 1, 3, 2, 4, 3, 5, 4, 5]  # low ones first, mixed
        body = json.dumps({"prompt": "hello sim", "max_tokens": 2}).encode()
        reqs = []
        seen = {}
        t_hold = time.monotonic()
        for i, c in enumerate(order):
            k = seen[c] = seen.get(c, 0) + 1
            r = Req(self.l_sat, f"sd-{c}-{k}", f"crit-{c}-{k}", c, body=body, path="/v1/completions",
                    timeout=40)
            r.start()
            reqs.append(r)
            self.wait_queue(self.fg_sat_metrics, i + 1, label="sat")
        tot = self.sim_totals()
        self.check(f"sat-d1 both sims saturated: {len(reqs)} requests held in the queue",
                   sum(tot.values()) == 0 and all(r.is_alive() for r in reqs),
                   f"queue gauge {len(reqs)}; sims requests_total {tot}; "
                   f"enqueued in {time.monotonic() - t_hold:.2f}s")
        # Arrival order at sim-a: poll per_workload and note the poll at which each id appears.
        arrivals = []  # (poll index, monotonic, workload id)
        stop = threading.Event()

        def poll():
            idx, known = 0, set()
            while not stop.is_set():
                try:
                    pw = self.sim_stats("sim-a").get("per_workload", {})
                except Exception:
                    time.sleep(0.01)
                    continue
                now = time.monotonic()
                for wid in pw:
                    if wid.startswith("crit-") and wid not in known:
                        known.add(wid)
                        arrivals.append((idx, now, wid))
                idx += 1
                time.sleep(0.003)

        poller = threading.Thread(target=poll, daemon=True, name="sat-d-poller")
        poller.start()
        # One request per scrape: sim-a reports waiting = threshold - 1 (room for exactly one
        # until the next scrape); sim-b stays saturated.
        t_rel = time.monotonic()
        held_for = t_rel - t_hold
        self.sim_force("sim-a", waiting=thr - 1)
        hung = join_all(reqs, 40)
        t_done = time.monotonic()
        try:
            wait_until("sim-a saw every workload",
                       lambda: len(arrivals) >= len(reqs), 5, interval=0.02)
        except TimeoutError:
            pass
        stop.set()
        poller.join(2)
        bad = [r.describe() for r in reqs if r.status != 200]
        tot = self.sim_totals()
        self.check(f"sat-d2 all {len(reqs)} released via sim-a -> 200; sim-b (saturated) got 0",
                   not hung and not bad and tot["sim-b"] == 0 and tot["sim-a"] == len(reqs),
                   f"held {held_for:.2f}s, released over {t_done - t_rel:.2f}s; requests_total {tot}"
                   + (f"; bad: {bad}" if bad else ""))
        arr = sorted(arrivals)
        crit = [int(w.split("-")[1]) for _, _, w in arr]
        # inversions: a later arrival (strictly later poll) of higher criticality
        worst = 0
        for i in range(len(arr)):
            for j in range(i + 1, len(arr)):
                if arr[j][0] > arr[i][0]:
                    worst = max(worst, crit[j] - crit[i])
        first1 = min((p for (p, _, w), c in zip(arr, crit) if c == 1), default=None)
        last5 = max((p for (p, _, w), c in zip(arr, crit) if c == 5), default=None)
        gaps = [f"{(b[1] - a[1]) * 1000:.0f}" for a, b in zip(arr, arr[1:])]
        done_order = [r.crit for r in sorted((r for r in reqs if r.done_at), key=lambda r: r.done_at)]
        ok = (len(arr) == len(reqs) and first1 is not None and last5 is not None
              and last5 <= first1 and worst < 2)
        self.check("sat-d3 released highest criticality first (arrival order at sim-a)", ok,
                   f"arrival crit order {crit} (worst inversion {worst} level(s)); "
                   f"gaps ms {gaps}; client completion order {done_order}")

    def phase_sat_e(self):
        view, raw = self.sat_backends()
        types = {"address": str, "source": str, "inflight": int, "max_inflight": int,
                 "waiting": (int, float), "running": (int, float), "kv_cache_usage": (int, float),
                 "saturation": (int, float), "metrics_age_ms": (int, float), "draining": bool}
        probs = []
        if not isinstance(raw, list) or len(raw) != 2:
            probs.append(f"expected a list of 2 objects, got {raw!r:.200}")
        for o in raw if isinstance(raw, list) else []:
            for k, t in types.items():
                v = o.get(k, "<missing>") if isinstance(o, dict) else "<not an object>"
                if not isinstance(v, t) or (t is not bool and isinstance(v, bool)):
                    probs.append(f"{o.get('address') if isinstance(o, dict) else o}.{k}={v!r}")
            if isinstance(o, dict):
                if o.get("source") != "static":
                    probs.append(f"{o.get('address')}.source={o.get('source')!r}")
                if o.get("draining") is not False or o.get("max_inflight") != 0:
                    probs.append(f"{o.get('address')}: draining/max_inflight {o.get('draining')}/{o.get('max_inflight')}")
        self.check("sat-e1 /api/v1/backends: every field, sensible types", not probs,
                   f"problems: {probs[:6]}" if probs else f"{json.dumps(raw)[:300]}")
        # The scraped values pass through: force distinctive values on sim-a.
        self.sim_force("sim-a", waiting=1, running=3, kv_cache_usage=0.5)
        try:
            v, dt = self.sat_wait_backends(
                "sim-a forced values in /api/v1/backends",
                lambda v: v["sim-a"]["waiting"] == 1 and v["sim-a"]["running"] == 3
                and abs(v["sim-a"]["kv_cache_usage"] - 0.5) < 1e-6)
            ok, detail = True, f"after {dt:.2f}s: {v['sim-a']}"
        except SkipRest as e:
            ok, detail = False, str(e)
        self.check("sat-e2 scraped waiting/running/kv_cache_usage of sim-a show up in the API", ok, detail)
        samples = self.sat_metrics()
        missing = [m for m in self.SAT_METRICS if not any(s[0] == m for s in samples)]
        for m in self.SAT_PER_BACKEND:
            for n in self.sims:
                if not any(s[0] == m and self.sim_addr(n) in s[1].get("backend", "") for s in samples):
                    missing.append(f"{m}{{backend~{n}}}")
        if not any(s[0] == "flowgate_scrapes_total" and "result" in s[1] for s in samples):
            missing.append("flowgate_scrapes_total{result}")
        wait_v = [s[2] for s in samples if s[0] == "flowgate_backend_waiting"
                  and self.sim_addr("sim-a") in s[1].get("backend", "")]
        self.check("sat-e3 /metrics exports every saturation metric (per backend where labelled)",
                   not missing, f"missing: {missing}" if missing else
                   f"{len(self.SAT_METRICS)} names; flowgate_backend_waiting(sim-a)={wait_v}")
        self.sim_force("sim-a")
        idle = [None]

        def drained():
            v, _ = self.sat_backends()
            idle[0] = {n: b["inflight"] for n, b in v.items()}
            return all(x == 0 for x in idle[0].values()) and self.queue_size(self.fg_sat_metrics) == 0

        try:
            wait_until("sat idle: inflight 0, queue 0", drained, 10)
            ok = True
        except TimeoutError:
            ok = False
        self.check("sat-e4 after all checks: inflight 0 on both sims, queue gauge 0", ok,
                   f"inflight {idle[0]}")

    # -- main ---------------------------------------------------------------
    def run(self):
        print(f"workdir: {self.workdir}", flush=True)
        print(f"ports: admin={self.admin_port} upstreams={self.upstreams} "
              f"listeners main={self.l_main} small={self.l_small} "
              f"flowgate main={self.fg_main_grpc}/{self.fg_main_metrics} "
              f"small={self.fg_small_grpc}/{self.fg_small_metrics} "
              f"sat={self.l_sat}->{self.fg_sat_grpc}/{self.fg_sat_metrics} sims={self.sims}",
              flush=True)
        full_cfg = self.write_envoy_config(ext_proc=True)
        ok = self.validate_envoy_config(full_cfg, "ext_proc config")
        if self.args.validate_only:
            return
        if self.args.no_ext_proc:
            self.envoy_cfg = self.write_envoy_config(ext_proc=False, suffix="-no-ext-proc")
            if not self.validate_envoy_config(self.envoy_cfg, "no-ext-proc config"):
                return
            self.start_upstreams()
            self.start_envoy()
            self.check("startup: upstreams + envoy ready", True)
            self.run_phase("routing only (no ext_proc)", self.phase_routing_only)
            return
        if not ok:
            return
        self.envoy_cfg = full_cfg
        self.start_upstreams()
        self.start_flowgate("main", self.fg_main_grpc, self.fg_main_metrics, 10000)
        self.start_flowgate("small", self.fg_small_grpc, self.fg_small_metrics, self.args.small_queue)
        self.wait_flowgate("main", self.fg_main_metrics)
        self.wait_flowgate("small", self.fg_small_metrics)
        self.start_envoy()
        q = self.queue_size(self.fg_main_metrics)
        self.check("startup: upstreams, flowgate x2, envoy ready; queue gauge exported",
                   q is not None, f"initial queue size {q}")
        self.run_phase("a. concurrency", self.phase_concurrent)
        self.run_phase("b. priority", self.phase_priority)
        self.run_phase("c. full queue", self.phase_full_queue)
        self.run_phase("d. drained", self.phase_drained)
        self.run_phase("e. envoy SIGKILL + restart", self.phase_envoy_kill)
        self.run_phase("d'. drained after fault", self.phase_drained)
        # --- TLS pair (e2e/tls_pair.py): its own Envoy and flowgate, mTLS between them ---
        if self.args.no_tls:
            print("--- TLS pair skipped (--no-tls)", flush=True)
        else:
            self.run_phase("tls. Envoy -> flowgate over mTLS",
                           lambda: tls_pair.phase(self, sys.modules[__name__]))
        # --- end of the TLS pair ---
        # --- live reconfiguration (e2e/live_config.py): its own Envoy, flowgate and upstream C ---
        if self.args.no_live:
            print("--- live reconfiguration skipped (--no-live)", flush=True)
        else:
            self.run_phase("live. discovery edits and SIGHUP reloads under load",
                           lambda: live_config.phase(self, sys.modules[__name__]))
        # --- end of live reconfiguration ---
        # --- cost (e2e/cost.py): its own Envoy, flowgate (fairness vtc) and flowgate-sim ---
        if self.args.no_cost or not self.args.flowgate_sim:
            print("--- cost phase skipped (--no-cost, or no --flowgate-sim)", flush=True)
            if not self.args.no_cost:
                self.check("cost: setup", False, "no --flowgate-sim binary given (use --no-cost to skip)")
        else:
            self.run_phase("cost. token usage through Envoy charged to workloads",
                           lambda: cost.phase(self, sys.modules[__name__]))
            self.run_phase("plain. a skipped response body holds its slot until the stream ends",
                           lambda: held_stream.phase(self, sys.modules[__name__]))
        # --- end of cost ---
        if self.args.no_sat:
            print("--- saturation checks skipped (--no-sat)", flush=True)
            return
        if not self.args.flowgate_sim:
            self.check("sat: setup", False, "no --flowgate-sim binary given (use --no-sat to skip)")
            return
        self.run_sat_phases()

    def report_logs(self):
        for name in list(self.procs.procs):
            tail = self.procs.log_tail(name, 20)
            if tail:
                print(f"----- last lines of {name}.log -----\n{tail}", flush=True)


def main():
    ap = argparse.ArgumentParser(description="flowgate real-Envoy e2e test")
    ap.add_argument("--envoy", default=shutil.which("envoy") or "envoy")
    ap.add_argument("--flowgate", help="path to the flowgate binary (not needed with --no-ext-proc)")
    ap.add_argument("--flowgate-sim", help="path to the flowgate-sim binary (saturation checks)")
    ap.add_argument("--no-sat", action="store_true", help="skip the saturation (flowgate-sim) checks")
    ap.add_argument("--sat-threshold", type=int, default=2, help="sat: queue_depth_threshold")
    ap.add_argument("--sat-requests", type=int, default=20, help="sat: requests per batch")
    ap.add_argument("--envoy-template", default=os.path.join(HERE, "envoy.yaml.tmpl"))
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "target", "e2e-run"))
    ap.add_argument("--envoy-log-level", default="warn")
    ap.add_argument("--concurrent", type=int, default=40)
    ap.add_argument("--small-queue", type=int, default=4)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=280.0, help="overall seconds")
    ap.add_argument("--no-ext-proc", action="store_true")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS pair (e2e/tls_pair.py)")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost phase (e2e/cost.py)")
    ap.add_argument("--no-live", action="store_true",
                    help="skip the live-reconfiguration phase (e2e/live_config.py)")
    ap.add_argument("--live-reloads", type=int, default=100, help="live4: SIGHUP reloads under load")
    ap.add_argument("--live-changes", type=int, default=100,
                    help="live4: discovery-file rewrites under load")
    ap.add_argument("--validate-only", action="store_true")
    args = ap.parse_args()
    if not (args.no_ext_proc or args.validate_only):
        if not args.flowgate or not os.access(args.flowgate, os.X_OK):
            print(f"flowgate binary not found/executable: {args.flowgate!r}", file=sys.stderr)
            print("0 passed, 1 failed")
            return 1
        if args.flowgate_sim and not os.access(args.flowgate_sim, os.X_OK):
            print(f"flowgate-sim binary not found/executable: {args.flowgate_sim!r}", file=sys.stderr)
            print("0 passed, 1 failed")
            return 1

    h = Harness(args)

    def on_alarm(signum, frame):
        raise GlobalTimeout(f"overall deadline of {args.deadline}s exceeded")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.alarm(int(args.deadline))
    try:
        h.run()
    except GlobalTimeout as e:
        h.check("global deadline", False, str(e))
    except KeyboardInterrupt as e:
        h.check("interrupted", False, str(e))
    except SkipRest as e:
        h.check("startup", False, str(e))
    except Exception as e:
        h.check("startup", False, repr(e))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        failed = [r for r in h.results if not r[1]]
        h.release_all_holds()
        if failed:
            h.report_logs()
        h.procs.stop_all()
    passed = sum(1 for r in h.results if r[1])
    if not h.results:
        h.results.append(("no checks ran", False, ""))
    failed = sum(1 for r in h.results if not r[1])
    # The failed checks again, after the log tails, so the last lines of a run name them.
    for name, ok, detail in h.results:
        if not ok:
            print(f"[FAIL] {name}" + (f" -- {detail[:400]}" if detail else ""), flush=True)
    print(f"{passed} passed, {failed} failed in {time.monotonic() - h.started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
