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
                 dest=None, timeout=60.0, path=None):
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
        self.timeout = timeout
        self.status = None
        self.resp_headers = {}
        self.body = b""
        self.error = None
        self.done_at = None

    def run(self):
        try:
            self.status, self.resp_headers, self.body = http_req(
                self.port, "POST", self.path, self.headers, body=b'{"prompt":"hi"}',
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

def flowgate_config(listen_port, metrics_port, backend_ports, max_requests, ttl="30s", shards=1):
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
  wait_weight: 0.4
  criticality_weight: 0.4
  rate_weight: 0.2
  wait_cap: 60s
  rate_cap: 100
  rate_window: 60s
  rescore_interval: 100ms
workloads:
  default_criticality: 3
  idle_timeout: 5m
  max_tracked: 100000
  caps: []
"""


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
        (self.admin_port, self.up_a, self.up_b, self.l_main, self.l_small,
         self.fg_main_grpc, self.fg_main_metrics, self.fg_small_grpc,
         self.fg_small_metrics) = free_ports(9)
        self.upstreams = {"up-a": self.up_a, "up-b": self.up_b}
        self.envoy_cfg = None

    # -- reporting ---------------------------------------------------------
    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        tag = "PASS" if ok else "FAIL"
        print(f"[{tag}] {name}" + (f" -- {detail}" if detail else ""), flush=True)
        return ok

    def run_phase(self, title, fn):
        print(f"--- {title}", flush=True)
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

    def start_flowgate(self, name, grpc_port, metrics_port, max_requests):
        cfg = os.path.join(self.workdir, f"flowgate-{name}.yaml")
        with open(cfg, "w") as f:
            f.write(flowgate_config(grpc_port, metrics_port, [self.up_a, self.up_b],
                                    max_requests, shards=self.args.shards))
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self.procs.start(f"flowgate-{name}", [self.args.flowgate, "serve", "--config", cfg], env=env)

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

    # -- main ---------------------------------------------------------------
    def run(self):
        print(f"workdir: {self.workdir}", flush=True)
        print(f"ports: admin={self.admin_port} upstreams={self.upstreams} "
              f"listeners main={self.l_main} small={self.l_small} "
              f"flowgate main={self.fg_main_grpc}/{self.fg_main_metrics} "
              f"small={self.fg_small_grpc}/{self.fg_small_metrics}", flush=True)
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

    def report_logs(self):
        for name in list(self.procs.procs):
            tail = self.procs.log_tail(name, 20)
            if tail:
                print(f"----- last lines of {name}.log -----\n{tail}", flush=True)


def main():
    ap = argparse.ArgumentParser(description="flowgate real-Envoy e2e test")
    ap.add_argument("--envoy", default=shutil.which("envoy") or "envoy")
    ap.add_argument("--flowgate", help="path to the flowgate binary (not needed with --no-ext-proc)")
    ap.add_argument("--envoy-template", default=os.path.join(HERE, "envoy.yaml.tmpl"))
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "target", "e2e-run"))
    ap.add_argument("--envoy-log-level", default="warn")
    ap.add_argument("--concurrent", type=int, default=40)
    ap.add_argument("--small-queue", type=int, default=4)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=280.0, help="overall seconds")
    ap.add_argument("--no-ext-proc", action="store_true")
    ap.add_argument("--validate-only", action="store_true")
    args = ap.parse_args()
    if not (args.no_ext_proc or args.validate_only):
        if not args.flowgate or not os.access(args.flowgate, os.X_OK):
            print(f"flowgate binary not found/executable: {args.flowgate!r}", file=sys.stderr)
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
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
