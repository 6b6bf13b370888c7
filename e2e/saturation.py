"""The e2e test's saturation phases (sat-*): flowgate "sat" in front of two flowgate-sim servers
with the utilization detector. Methods of the harness (`run_e2e.Harness`)."""
import json
import threading
import time

from common import LOCALHOST, SkipRest
from configs import flowgate_config
from httpc import Req, get_json, http_req, join_all, wait_until


class SaturationPhases:

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
