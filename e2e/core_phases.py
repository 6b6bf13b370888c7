"""The e2e test's core phases against flowgate "main" and "small" (a-e, and routing only with
--no-ext-proc): methods of the harness (`run_e2e.Harness`), which holds the ports, processes and
upstream holds they use."""
import signal

from common import DEST_HEADER, LOCALHOST, QUEUE_GAUGE, SkipRest
from httpc import Req, join_all, wait_until


class CorePhases:

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
