#!/usr/bin/env python3
"""flowgate demo: Envoy + flowgate + two flowgate-sim model servers, and the seed's manual
scenarios sent through Envoy (stdlib only; scripts/demo.sh builds the binaries and gets Envoy).

    python3 scripts/demo.py --flowgate BIN --flowgate-sim BIN --envoy BIN [--hold]

Topology, all on free 127.0.0.1 ports: client -> Envoy (deploy/envoy.yaml, ports rewritten) ->
ext_proc -> flowgate (detector `utilization`: the sims' vLLM metrics decide room) -> sim-a
(speed 1) or sim-b (--speed 0.5, half as fast).

Scenarios (seed 000, "Manual Testing with Real Requests"):
  1. basic priority: crit 1, 3 and 5 requests arrive together while the pool is full;
  2. wait boost: an old crit-1 request (queued 3 s) against new crit-3 and crit-4 requests;
  3. rate fairness: a workload flooding 60 requests against a light one, both at crit 4.
"The pool is full" is made real by the sims reporting a deep queue (flowgate-sim's
/admin/force waiting=50) until the burst is queued in flowgate; then the sims report their live
values again and flowgate dispatches in score order, as fast as the sims take requests.

The demo's flowgate config shortens scoring.wait_cap to 4s and rate_window to 5s (rate_cap 10
req/s) so aging and the rate penalty show within seconds; defaults are 60s / 60s / 100.
With --hold, everything keeps running after the scenarios until Ctrl-C.
"""
import argparse
import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gatewaylib as gw  # noqa: E402

MAX_TOKENS = 8


def pct(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


class Demo:
    def __init__(self, g):
        self.g = g

    # -- the pool ------------------------------------------------------------------------------
    def backends(self):
        _, s = self.g.metrics()
        return {lb["backend"]: v for lb, v in s.get("flowgate_backend_saturation", [])}

    def fill_pool(self):
        for name in self.g.sims:
            self.g.sim_force(name, waiting=50)
        gw.wait_until("every backend saturated",
                      lambda: (b := self.backends()) and all(v >= 1 for v in b.values()), 10)

    def open_pool(self):
        for name in self.g.sims:
            self.g.sim_force(name, waiting=None)

    def wait_queued(self, n):
        gw.wait_until(f"{n} requests queued in flowgate", lambda: self.g.queued() >= n, 15)

    def settle(self):
        gw.wait_until("an empty queue and idle backends", lambda: self.g.queued() == 0 and all(
            v < 1 for v in self.backends().values()), 30)

    # -- traffic -------------------------------------------------------------------------------
    def send(self, specs, out, delay=0.0):
        """specs: [(label, workload, criticality)]; results appended to out as dicts. Streamed:
        the response headers come when the sim takes the request (`started`), the body when it
        has generated MAX_TOKENS tokens (`done`)."""
        threads = []
        for label, w, c in specs:
            def run(label=label, w=w, c=c):
                t0 = time.monotonic()
                status, drop, secs, hdr = gw.completion(self.g.listen_port, w, c, max_tokens=MAX_TOKENS,
                                                        stream=True)
                out.append({"label": label, "status": status, "drop": drop, "secs": secs,
                            "sent": t0, "started": t0 + hdr, "done": t0 + secs})
            t = threading.Thread(target=run, daemon=True)
            t.start()
            threads.append(t)
            if delay:
                time.sleep(delay)
        return threads

    @staticmethod
    def join(threads):
        for t in threads:
            t.join(90)

    @staticmethod
    def report(results, order):
        print(f"    {'who':<28} {'n':>3} {'p50':>9} {'p99':>9}  status codes")
        for label in order:
            rs = [r for r in results if r["label"] == label]
            lat = [r["secs"] * 1000 for r in rs]
            codes = {}
            for r in rs:
                k = str(r["status"]) + (f" {r['drop']}" if r["drop"] else "")
                codes[k] = codes.get(k, 0) + 1
            print(f"    {label:<28} {len(rs):>3} {pct(lat, 50):>7.0f}ms {pct(lat, 99):>7.0f}ms  "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(codes.items())))

    @staticmethod
    def p50(results, label):
        return pct([r["secs"] for r in results if r["label"] == label], 50)

    # -- scenarios -----------------------------------------------------------------------------
    def basic_priority(self, per=8):
        print("\n[1] basic priority: 8 requests each at crit 1, 3 and 5 arrive together while the "
              "pool is full")
        self.fill_pool()
        out = []
        specs = [(f"crit {c} (workload prio-c{c})", f"prio-c{c}", c) for _ in range(per) for c in (1, 3, 5)]
        ts = self.send(specs, out)
        self.wait_queued(len(specs))
        self.open_pool()
        self.join(ts)
        order = [f"crit {c} (workload prio-c{c})" for c in (5, 3, 1)]
        self.report(out, order)
        p = [self.p50(out, lb) for lb in order]
        print(f"    -> p50 crit 5 < crit 3 < crit 1: {'yes' if p[0] < p[1] < p[2] else 'NO'}")
        return out

    def wait_boost(self, age=3.0):
        print(f"\n[2] wait boost: one crit-1 request queued {age:.0f}s, then 4 new crit-3 and 4 new "
              "crit-4 requests; then the pool opens")
        self.fill_pool()
        out = []
        ts = self.send([("old crit 1 (waited 3s)", "old-batch", 1)], out)
        self.wait_queued(1)
        time.sleep(age)
        specs = [("new crit 3", "new-c3", 3), ("new crit 4", "new-c4", 4)] * 4
        ts += self.send(specs, out)
        self.wait_queued(1 + len(specs))
        opened = time.monotonic()
        self.open_pool()
        self.join(ts)
        self.report(out, ["old crit 1 (waited 3s)", "new crit 4", "new crit 3"])
        started = sorted(out, key=lambda r: r["started"])
        order = " ".join("old-c1" if r["label"].startswith("old") else r["label"].replace("new crit ", "c")
                         for r in started)
        old = next(r for r in out if r["label"].startswith("old"))
        print(f"    -> dispatch order (response headers): {order}")
        print(f"    -> the old crit-1 request went first: "
              f"{'yes' if started[0] is old else 'NO'}, {(old['started'] - opened) * 1000:.0f}ms after "
              f"the pool opened (score 0.4*3/4 + 0.4*1/5 = 0.38 beats a new crit 4's 0.32)")
        return out

    def rate_fairness(self, flood=60, light=5):
        print(f"\n[3] rate fairness: workload 'flood' sends {flood} requests at once, workload 'light' "
              f"{light} (one every 200ms), both crit 4")
        out = []
        ts = self.send([("flood (crit 4)", "flood", 4)] * flood, out)
        time.sleep(0.3)
        ts += self.send([("light (crit 4)", "light", 4)] * light, out, delay=0.2)
        self.join(ts)
        self.report(out, ["light (crit 4)", "flood (crit 4)"])
        pl, pf = self.p50(out, "light (crit 4)"), self.p50(out, "flood (crit 4)")
        print(f"    -> light p50 {pl * 1000:.0f}ms vs flood p50 {pf * 1000:.0f}ms: the flood's rate "
              f"penalty lets the light workload through: {'yes' if pl < pf else 'NO'}")
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--flowgate-sim", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--workdir", default=os.path.join(gw.ROOT, "target", "demo"))
    ap.add_argument("--hold", action="store_true", help="keep everything running until Ctrl-C")
    args = ap.parse_args()

    stop = threading.Event()
    def on_signal(*_):
        stop.set()
        raise KeyboardInterrupt
    # Both set explicitly: a shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    g = gw.Gateway(args.workdir, args.flowgate, args.flowgate_sim, args.envoy)
    results = []
    try:
        g.start_sim("sim-a", "--max-num-seqs", "2")
        g.start_sim("sim-b", "--max-num-seqs", "2", "--speed", "0.5")
        backends = "".join(f"  - address: {gw.LOCALHOST}:{p}\n    max_inflight: 0\n    engine: vllm\n"
                           for p in g.sims.values())
        g.start_flowgate(f"""# generated by scripts/demo.py
shards: 1
backends:                 # max_inflight 0: no static cap, the sims' metrics decide
{backends}saturation:
  detector: utilization
  scrape_interval: 20ms
  queue_depth_threshold: 1 # a sim takes a request only while nothing waits on it
  staleness: 500ms
queue:
  ttl: 30s
scoring:
  wait_cap: 4s             # compressed from 60s so aging shows within seconds
  rate_cap: 10             # requests/s at which the rate penalty is full (default 100)
  rate_window: 5s          # default 60s
""")
        g.start_envoy()
        m = g.metrics_port
        print("flowgate demo: Envoy (deploy/envoy.yaml) -> flowgate (detector utilization) -> "
              "flowgate-sim x2")
        print(f"  gateway      http://{gw.LOCALHOST}:{g.listen_port}/v1/completions")
        print(f"  status page  http://{gw.LOCALHOST}:{m}/")
        print(f"  metrics      http://{gw.LOCALHOST}:{m}/metrics   "
              f"(backends: http://{gw.LOCALHOST}:{m}/api/v1/backends)")
        print(f"  envoy admin  http://{gw.LOCALHOST}:{g.admin_port}/")
        sims = ", ".join(f"{n} 127.0.0.1:{p}" for n, p in g.sims.items())
        print(f"  model servers {sims} (sim-b at --speed 0.5); 2 seats each, {MAX_TOKENS} tokens "
              "per request")
        print(f"  logs         {g.workdir}/")

        d = Demo(g)
        t0 = time.monotonic()
        for scenario in (d.basic_priority, d.wait_boost, d.rate_fairness):
            results += scenario()
            d.settle()
            g.check_alive()
        _, s = g.metrics()
        dec = {lb["outcome"]: int(v) for lb, v in s.get("flowgate_requests_total", []) if v}
        print(f"\n{len(results)} requests in {time.monotonic() - t0:.1f}s; flowgate decisions: "
              + ", ".join(f"{k} {v}" for k, v in sorted(dec.items())))
        if args.hold:
            print("\nholding: everything keeps running; send traffic to the gateway above, e.g.\n"
                  f"  curl -H 'x-workload-context: {{\"workload_id\":\"me\",\"criticality\":4}}' "
                  f"-d '{{\"prompt\":\"hi\",\"max_tokens\":8}}' http://{gw.LOCALHOST}:{g.listen_port}/v1/completions\n"
                  "Ctrl-C to stop.", flush=True)
            while not stop.is_set():
                g.check_alive()
                stop.wait(1)
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        g.stop()
    bad = [r for r in results if r["status"] != 200]
    if bad:
        print(f"{len(bad)} request(s) not served 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
