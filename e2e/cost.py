"""The e2e test's cost phase (issue #12): token usage read from real streamed and JSON responses
of `flowgate-sim` through a real Envoy, charged to workloads (stdlib only).

    client --HTTP/1.1--> Envoy "envoy-cost" (listener "cost") --ext_proc--> flowgate "cost"
    Envoy router --> ORIGINAL_DST --> flowgate-sim "sim-cost" (started here)

flowgate "cost" runs `scoring.fairness: vtc`, so every dispatched request's response is read for
its usage (the filter has `allow_mode_override: true`, which flowgate uses only for requests whose
usage no rule needs: none here). The simulator counts the tokens it prefilled and generated per
workload (`/admin/stats`), which is the truth the workload API must match. Every wait polls a real
signal with a deadline.

Checks (prefix "cost"), run by `phase(harness, lib)` where lib is the run_e2e module:
  cost0 flowgate-cost, sim-cost and envoy-cost up
  cost1 streamed (SSE, `stream_options.include_usage`) requests of workload `cost-stream` and JSON
        requests of `cost-json`, with prompts and max_tokens of several sizes, all 200 through
        Envoy; their bodies carry the usage
  cost2 /api/v1/workload/{id}/metrics: prompt_tokens and completion_tokens equal the simulator's
        per-workload counts exactly, for both workloads; token_rate_per_s > 0
  cost3 flowgate_usage_reported_total grew by exactly the requests sent, estimated by 0
  cost4 a stream without include_usage (no usage event): charged an estimate
        (flowgate_usage_estimated_total +1), completion tokens > 0 for its workload
  cost5 a `reject` quota (`cost-capped`: requests_per_minute 2): two requests 200 carrying
        x-ratelimit-remaining-requests 1 then 0, the third 429 with x-flowgate-drop-reason quota
        and a retry-after of about 30 s (when the bucket has room again)
  cost6 a `queue` quota (`cost-queued`: max_inflight 1): two concurrent long streams; while the
        first streams, the workload has 2 active, flowgate 1 in flight and 1 queued (it waits on
        its quota, not on capacity: 3 of 4 slots are free); then both end 200
  cost7 afterwards flowgate_inflight is 0 and nothing is queued
"""
import threading
import json
import os
import time

STREAMED = [(40, 8), (400, 24), (1200, 64), (10, 1), (700, 40), (90, 12)]  # (prompt bytes, max_tokens)
JSONS = [(30, 5), (500, 30), (2000, 16), (64, 64)]
WORKLOADS = ("cost-stream", "cost-json")
# How long a counter may take to show a charge made at the response's end. One poll takes ~3 ms;
# one CI run timed out at the old 5 s bound without saying what it had read, so the checks now
# wait longer and report the last counters they saw.
COUNTER_WAIT_S = 20
QUOTAS = """  quotas:
    - workload_id: cost-capped
      requests_per_minute: 2
      on_exceed: reject
    - workload_id: cost-queued
      max_inflight: 1
"""


def start_sim(h, lib, name, port, *args):
    """Start `flowgate-sim` (engine vllm, model `name`) on `port` with `args`, and wait for its
    /health."""
    h.procs.start(name, [h.args.flowgate_sim, "--listen", f"{lib.LOCALHOST}:{port}",
                         "--engine", "vllm", "--model", name, *args])
    lib.wait_until(f"{name} /health",
                   lambda: lib.http_req(port, "GET", "/health", timeout=2)[0] == 200, 15)


def read_counters(h, lib, metrics_port, who):
    """flowgate's usage counters (`flowgate_usage_reported_total`, `_estimated_total`), its
    in-flight requests summed over backends (`inflight`) and its queue gauge (`queued`), from the
    /metrics of flowgate `who`; a metric absent from the page is absent from the dict."""
    st, _, body = lib.http_req(metrics_port, "GET", "/metrics", timeout=3)
    if st != 200:
        raise RuntimeError(f"{who} /metrics -> {st}")
    got = {}
    for name, labels, v in h.parse_metrics(body.decode(errors="replace")):
        if name in ("flowgate_usage_reported_total", "flowgate_usage_estimated_total"):
            got[name] = v
        if name == "flowgate_inflight":
            got["inflight"] = got.get("inflight", 0.0) + v
        if name == "flowgate_queued_requests":
            got["queued"] = v
    return got


class Cost:
    def __init__(self, h, lib):
        self.h, self.lib = h, lib
        self.admin, self.listen, self.grpc, self.metrics, self.sim = lib.free_ports(5)
        self.cfg = os.path.join(h.workdir, "flowgate-cost.yaml")

    def start(self):
        h, lib = self.h, self.lib
        start_sim(h, lib, "sim-cost", self.sim, "--max-num-seqs", "8", "--decode-step-ms", "1",
                  "--prefill-us-per-token", "5")
        backends = f"  - address: {lib.LOCALHOST}:{self.sim}\n    max_inflight: 4"
        with open(self.cfg, "w") as f:
            f.write(lib.flowgate_config(self.grpc, self.metrics, [], 10000, shards=h.args.shards,
                                        backends=backends, scoring_extra="  fairness: vtc\n",
                                        workloads_extra=QUOTAS))
        h.start_pair("cost", self.cfg, self.admin, self.listen, self.grpc, self.metrics)
        h.check("cost0 flowgate-cost, sim-cost and envoy-cost up", True)

    def send(self, workload, prompt_bytes, max_tokens, stream, include_usage=True):
        body = {"model": "sim-cost", "prompt": "x" * prompt_bytes, "max_tokens": max_tokens}
        if stream:
            body["stream"] = True
            if include_usage:
                body["stream_options"] = {"include_usage": True}
        headers = {"content-type": "application/json",
                   "x-workload-context": json.dumps({"workload_id": workload, "criticality": 3})}
        return self.lib.http_req(self.listen, "POST", "/v1/completions", headers,
                                 body=json.dumps(body).encode(), timeout=30)

    def counters(self):
        return read_counters(self.h, self.lib, self.metrics, "cost")

    def counters_when(self, pred, timeout_s=COUNTER_WAIT_S):
        """Poll /metrics until pred(counters) holds or timeout_s passes: the last counters read
        (empty if none could be) and the last error, for the check's verdict and detail."""
        deadline = time.monotonic() + timeout_s
        last, err = {}, None
        while True:
            try:
                last, err = self.counters(), None
                if pred(last):
                    return last, None
            except Exception as e:  # a slow or refused /metrics: retried until the deadline
                err = e
            if time.monotonic() >= deadline:
                return last, err
            time.sleep(0.02)  # poll interval of a counter read, not a substitute for a signal

    def workload(self, wid):
        return self.lib.get_json(self.metrics, f"/api/v1/workload/{wid}/metrics")

    def run(self):
        lib = self.lib
        before = self.counters()
        bad = []
        for pb, mt in STREAMED:
            st, hd, body = self.send("cost-stream", pb, mt, stream=True)
            if st != 200 or b'"usage"' not in body or not body.rstrip().endswith(b"data: [DONE]"):
                bad.append(f"stream {pb}/{mt}: {st} {body[-200:]!r}")
        for pb, mt in JSONS:
            st, hd, body = self.send("cost-json", pb, mt, stream=False)
            if st != 200 or "usage" not in json.loads(body or b"{}"):
                bad.append(f"json {pb}/{mt}: {st} {body[:200]!r}")
        n = len(STREAMED) + len(JSONS)
        self.h.check(f"cost1 {len(STREAMED)} streamed + {len(JSONS)} JSON requests through Envoy -> 200 "
                     "with usage", not bad, "; ".join(bad[:3]))

        sim = lib.get_json(self.sim, "/admin/stats")["per_workload"]
        problems = []
        for wid in WORKLOADS:
            w, s = self.workload(wid), sim.get(wid, {})
            got = (w["prompt_tokens"], w["completion_tokens"])
            want = (s.get("prompt_tokens"), s.get("completion_tokens"))
            if got != want or not w["token_rate_per_s"] > 0:
                problems.append(f"{wid}: flowgate {got} rate {w['token_rate_per_s']}, sim {want}")
        detail = "; ".join(problems) or ", ".join(
            f"{wid}: {sim[wid]['prompt_tokens']}/{sim[wid]['completion_tokens']} tokens" for wid in WORKLOADS)
        self.h.check("cost2 workload API token counts == flowgate-sim's per workload", not problems, detail)

        def moved(c, name):
            return c.get(name, 0) - before.get(name, 0)

        after, err = self.counters_when(lambda c: moved(c, "flowgate_usage_reported_total") >= n)
        rep = moved(after, "flowgate_usage_reported_total")
        est = moved(after, "flowgate_usage_estimated_total")
        self.h.check(f"cost3 flowgate_usage_reported_total +{n}, estimated +0", rep == n and est == 0,
                     f"reported +{rep:.0f}, estimated +{est:.0f}" + (f" (last /metrics error: {err!r})" if err else ""))

        st, _, body = self.send("cost-nousage", 200, 20, stream=True, include_usage=False)
        self.counters_when(lambda c: moved(c, "flowgate_usage_estimated_total") >= est + 1)
        w = self.workload("cost-nousage")
        truth = lib.get_json(self.sim, "/admin/stats")["per_workload"].get("cost-nousage")
        self.h.check("cost4 a stream without a usage event is charged an estimate",
                     st == 200 and b'"usage"' not in body and w["completion_tokens"] > 0
                     and w["prompt_tokens"] > 0,
                     f"status {st}, charged {w['prompt_tokens']}/{w['completion_tokens']} "
                     f"(bytes/4; the sim counted {truth})")

        self.quota_reject()
        self.quota_queue()

        end, err = self.counters_when(lambda c: c.get("inflight", 1) == 0 and c.get("queued", 1) == 0)
        self.h.check("cost7 afterwards inflight 0 and queue 0",
                     end.get("inflight", 1) == 0 and end.get("queued", 1) == 0,
                     f"{end}" + (f" (last /metrics error: {err!r})" if err else ""))

    def quota_reject(self):
        got = [self.send("cost-capped", 20, 2, stream=False) for _ in range(3)]
        (s1, h1, _), (s2, h2, _), (s3, h3, _) = got
        remaining = [h1.get("x-ratelimit-remaining-requests"), h2.get("x-ratelimit-remaining-requests")]
        retry = h3.get("retry-after")
        ok = (s1, s2, s3) == (200, 200, 429) and remaining == ["1", "0"] \
            and h3.get("x-flowgate-drop-reason") == "quota" and retry is not None and 25 <= int(retry) <= 30
        self.h.check("cost5 reject quota: 200, 200 (remaining 1, 0), then 429 quota with retry-after ~30 s", ok,
                     f"statuses {(s1, s2, s3)}, remaining {remaining}, "
                     f"reason {h3.get('x-flowgate-drop-reason')}, retry-after {retry}")

    def quota_queue(self):
        lib = self.lib
        results = [None, None]

        def run(i):
            try:
                results[i] = self.send("cost-queued", 20, 400, stream=True)[0]
            except Exception as e:  # recorded: a lost request fails the check
                results[i] = repr(e)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        last = {}

        def waiting_on_quota():
            last["w"], last["c"] = self.workload("cost-queued"), self.counters()
            return last["w"]["active"] == 2 and last["c"].get("inflight") == 1 and last["c"].get("queued") == 1

        try:
            lib.wait_until("cost-queued: 2 active, 1 in flight, 1 queued", waiting_on_quota, 10, interval=0.005)
            held = True
        except TimeoutError:
            held = False
        for t in threads:
            t.join(30)
        c, seen = last.get("c", {}), last.get("w")
        ok = held and results == [200, 200]
        self.h.check("cost6 queue quota (max_inflight 1): the second waits on its quota while 3 slots are "
                     "free, then both 200", ok,
                     f"at 2 active: inflight {c.get('inflight')}, queued {c.get('queued')}; statuses {results}; "
                     f"workload {seen}")


def phase(h, lib):
    c = Cost(h, lib)
    c.start()
    c.run()
