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

The harness here starts the shared parts and runs the phases; the rest is in modules below it:
e2e/core_phases.py (a-e, routing only), e2e/saturation.py (sat-*), e2e/configs.py (flowgate's and
Envoy's configs), e2e/httpc.py (requests, waits, client threads, metrics text), e2e/procs.py
(children and ports), e2e/common.py (shared names and exceptions).

Modes:
  (default)        full test; needs --flowgate
  --no-ext-proc    routing-only smoke test: Envoy without the ext_proc filter,
                   the client sets x-gateway-destination-endpoint itself.
  --validate-only  render configs and run `envoy --mode validate` only.

Prints one line per check and finishes with "N passed, M failed"; exit 1 if
any check failed.  Every wait has a deadline; all children are killed at exit.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from common import DEST_HEADER, LOCALHOST, QUEUE_GAUGE, GlobalTimeout, SkipRest
from configs import flowgate_config, render_envoy_config
from core_phases import CorePhases
from httpc import Req, get_json, http_req, join_all, parse_metrics, wait_until
from procs import Procs, free_ports
from saturation import SaturationPhases

import tls_pair  # the TLS pair: Envoy -> flowgate over mTLS (e2e/tls_pair.py)
import live_config  # live reconfiguration: discovery edits + SIGHUP reloads (e2e/live_config.py)
import cost  # token usage of flowgate-sim responses charged to workloads (e2e/cost.py)
import held_stream  # a skipped response body still holds its slot to the end (e2e/held_stream.py)

HERE = os.path.dirname(os.path.abspath(__file__))
# What the phase modules reach through `lib` (this module, passed to their `phase(h, lib)`).
__all__ = ["DEST_HEADER", "LOCALHOST", "QUEUE_GAUGE", "GlobalTimeout", "SkipRest", "Req",
           "flowgate_config", "free_ports", "get_json", "http_req", "join_all",
           "render_envoy_config", "wait_until"]


# ---------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------

class Harness(CorePhases, SaturationPhases):
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


    parse_metrics = staticmethod(parse_metrics)

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
