"""The e2e test's held-stream phase: a request whose response body flowgate skips (the ext_proc
mode override, used when no token rule needs the usage) keeps its slot until its streamed
response ends, through a real Envoy (stdlib only).

    client --HTTP/1.1--> Envoy "envoy-plain" (listener "plain") --ext_proc--> flowgate "plain"
    Envoy router --> ORIGINAL_DST --> flowgate-sim "sim-plain" (started here)

flowgate "plain" has no token rule (fairness `rate` by requests; one workload has a request
quota), so it answers every dispatch with the override that turns the response body phase off.
Envoy (1.37 on) closes the ext_proc stream as soon as no phase is left, and flowgate frees a slot
when the stream closes: if the override left nothing to send after the response headers, the slot
would be freed at the response's first byte while the backend still generates, and `max_inflight`
would not hold.
One backend with `max_inflight: 1` makes that visible. Every wait polls a real signal (the
client's own reads, flowgate's `/metrics`) with a deadline.

Checks (prefix "plain"), run by `phase(harness, lib)` where lib is the run_e2e module:
  plain0 flowgate-plain, sim-plain and envoy-plain up
  plain1 two streamed requests at once against max_inflight 1: after the first one's first chunk
        and before its end, flowgate has 1 in flight and 1 queued (read twice, the second time
        LATE_CHUNK chunks later); the second one's response starts only after the first one's
        ended; both 200 with every chunk
  plain2 no response body went to flowgate: Envoy's ext_proc stream_msgs_sent grew by at most
        PLAIN_MAX_MSGS per request (the override honoured), and no usage was charged
  plain3 a workload with only a request quota (`plain-quota`: requests_per_minute 600), whose
        response headers flowgate must see to add x-ratelimit-remaining-requests but whose body it
        need not read: the header says 599, Envoy sent QUOTA_MSGS ext_proc messages (request and
        response headers), no usage charged, and its slot is held to its stream's end: a plain
        request sent after its first chunk is queued (polled, and read again at LATE_CHUNK) and
        starts after it ends
  plain4 afterwards flowgate_inflight 0 and nothing queued
"""
import http.client
import json
import os
import threading
import time

from cost import read_counters, start_sim

MAX_TOKENS = 150        # chunks of the first stream: 150 decode steps of 8 ms, about 1.2 s
DECODE_STEP_MS = 8
LATE_CHUNK = 60         # the second look at the counters, this many chunks into the first stream
# The client threads time the first one's end and the second one's start; a client thread may read
# its last chunk a little late (the GIL), so "after" allows this much. Freed at the response headers
# instead, the second would start about MAX_TOKENS x DECODE_STEP_MS (1.2 s) before the first ends.
ORDER_SLACK_S = 0.05
COUNTERS = ("flowgate_usage_reported_total", "flowgate_usage_estimated_total")
MSGS_STAT = "http.ingress_plain.ext_proc.stream_msgs_sent"  # Envoy's, on listener "plain"
PLAIN_MAX_MSGS = 1      # the request headers; nothing of the response, whose end closes the stream
# A workload with a request quota and no token rule: its response headers go to flowgate (they get
# x-ratelimit-remaining-requests), its body does not.
QUOTA_WORKLOAD = "plain-quota"
QUOTA_RPM = 600
QUOTA_MSGS = 2          # the request headers and the response headers
QUOTAS = f"""  quotas:
    - workload_id: {QUOTA_WORKLOAD}
      requests_per_minute: {QUOTA_RPM}
"""


class Stream(threading.Thread):
    """One streamed completion through Envoy, read event by event; `events[k]` is set once `k`
    SSE events have arrived (for the k this test waits on)."""

    def __init__(self, listen, workload, marks=(1, LATE_CHUNK)):
        super().__init__(daemon=True, name=f"plain-{workload}")
        self.listen, self.workload = listen, workload
        self.events = {k: threading.Event() for k in marks}
        self.status, self.chunks, self.error = None, 0, None
        self.t_headers = self.t_end = None
        self.headers = {}
        self.done_bytes = b""

    def run(self):
        body = json.dumps({"model": "sim-plain", "prompt": "hello", "max_tokens": MAX_TOKENS,
                           "stream": True}).encode()
        headers = {"content-type": "application/json",
                   "x-workload-context": json.dumps({"workload_id": self.workload, "criticality": 3})}
        conn = http.client.HTTPConnection("127.0.0.1", self.listen, timeout=30)
        try:
            conn.request("POST", "/v1/completions", body=body, headers=headers)
            r = conn.getresponse()
            self.t_headers, self.status = time.monotonic(), r.status
            self.headers = {k.lower(): v for k, v in r.getheaders()}
            for line in r:
                if line.startswith(b"data: "):
                    self.chunks += 1
                    self.done_bytes = line
                    ev = self.events.get(self.chunks)
                    if ev:
                        ev.set()
            self.t_end = time.monotonic()
        except Exception as e:  # recorded: a lost request fails the check
            self.error = repr(e)
        finally:
            conn.close()
            for ev in self.events.values():
                ev.set()


class Plain:
    def __init__(self, h, lib):
        self.h, self.lib = h, lib
        self.admin, self.listen, self.grpc, self.metrics, self.sim = lib.free_ports(5)
        self.cfg = os.path.join(h.workdir, "flowgate-plain.yaml")

    def start(self):
        h, lib = self.h, self.lib
        start_sim(h, lib, "sim-plain", self.sim, "--max-num-seqs", "4",
                  "--decode-step-ms", str(DECODE_STEP_MS))
        backends = f"  - address: {lib.LOCALHOST}:{self.sim}\n    max_inflight: 1"
        with open(self.cfg, "w") as f:
            f.write(lib.flowgate_config(self.grpc, self.metrics, [], 10000, shards=h.args.shards,
                                        backends=backends, workloads_extra=QUOTAS))
        h.start_pair("plain", self.cfg, self.admin, self.listen, self.grpc, self.metrics)
        h.check("plain0 flowgate-plain, sim-plain and envoy-plain up", True)

    def counters(self):
        """As cost.read_counters, with no flowgate_inflight series read as 0 in flight."""
        c = read_counters(self.h, self.lib, self.metrics, "plain")
        c.setdefault("inflight", 0.0)
        c.setdefault("queued", None)
        return c

    def msgs_sent(self):
        """Envoy's count of ext_proc messages it sent on this listener."""
        st, _, body = self.lib.http_req(self.admin, "GET", f"/stats?filter={MSGS_STAT}", timeout=3)
        if st != 200:
            raise RuntimeError(f"envoy-plain /stats -> {st}")
        for line in body.decode(errors="replace").splitlines():
            name, _, value = line.partition(": ")
            if name.strip() == MSGS_STAT:
                return float(value)
        raise RuntimeError(f"envoy-plain /stats has no {MSGS_STAT}: {body[:200]!r}")

    def held_pair(self, first_workload, second_workload):
        """Stream one request of `first_workload`, send one of `second_workload` after its first
        chunk (so it can only queue behind it), and look at flowgate's counters while the first
        streams: once polled until 1 in flight and 1 queued, once LATE_CHUNK chunks in. Joins both."""
        first = Stream(self.listen, first_workload)
        first.start()
        first.events[1].wait(15)
        second = Stream(self.listen, second_workload)
        second.start()
        looks = []

        def queued_behind():
            c = self.counters()
            looks.append((first.chunks, c["inflight"], c["queued"]))
            return c["inflight"] == 1 and c["queued"] == 1

        try:
            self.lib.wait_until(f"{second_workload} queued behind the streaming {first_workload}",
                                queued_behind, 5, interval=0.005)
            early = True
        except TimeoutError:
            early = False
        first.events[LATE_CHUNK].wait(15)
        late = self.counters()
        looks.append((first.chunks, late["inflight"], late["queued"]))
        late_ok = late["inflight"] == 1 and late["queued"] == 1 and first.t_end is None
        first.join(30)
        second.join(30)
        return HeldPair(first, second, looks, early and late_ok)

    def run(self):
        before, msgs_before = self.counters(), self.msgs_sent()
        p = self.held_pair("plain-first", "plain-second")
        self.h.check("plain1 max_inflight 1 holds for a whole streamed response with its body skipped: "
                     "the second request waits until the first one's stream ends",
                     p.held and p.ordered() and p.whole(), p.describe())
        after, msgs = self.counters(), self.msgs_sent() - msgs_before
        moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
        self.h.check(f"plain2 no response body went to flowgate (mode override honoured): at most "
                     f"{PLAIN_MAX_MSGS} ext_proc messages per request, usage reported and estimated +0",
                     msgs <= 2 * PLAIN_MAX_MSGS and all(v == 0 for v in moved.values()),
                     f"Envoy's ext_proc stream_msgs_sent +{msgs:.0f} for 2 requests of {MAX_TOKENS} "
                     f"chunks; {moved}")
        self.quota_headers()

        def drained():
            c = self.counters()
            return c if c["inflight"] == 0 and c["queued"] == 0 else None

        try:
            end = self.lib.wait_until("plain inflight 0 and queue 0", drained, 10, interval=0.02)
        except TimeoutError:
            end = self.counters()
        self.h.check("plain4 afterwards inflight 0 and queue 0",
                     end["inflight"] == 0 and end["queued"] == 0, f"{end}")

    def quota_headers(self):
        """plain3: the `Headers` watch (a request quota, no token rule) through Envoy."""
        before, msgs_before = self.counters(), self.msgs_sent()
        p = self.held_pair(QUOTA_WORKLOAD, "plain-after-quota")
        after, msgs = self.counters(), self.msgs_sent() - msgs_before
        moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
        remaining = p.first.headers.get("x-ratelimit-remaining-requests")
        want_msgs = QUOTA_MSGS + PLAIN_MAX_MSGS
        self.h.check(f"plain3 a request-quota workload without a token rule: its response carries "
                     f"x-ratelimit-remaining-requests {QUOTA_RPM - 1}, costs {QUOTA_MSGS} ext_proc "
                     f"messages (no body), and keeps its slot until its stream ends (a request "
                     f"behind it waits until then)",
                     p.held and p.ordered() and p.whole() and remaining == str(QUOTA_RPM - 1)
                     and msgs == want_msgs and all(v == 0 for v in moved.values()),
                     f"x-ratelimit-remaining-requests {remaining!r}; Envoy's ext_proc stream_msgs_sent "
                     f"+{msgs:.0f} (want {want_msgs}: {QUOTA_MSGS} + {PLAIN_MAX_MSGS} for the plain "
                     f"one); {moved}; {p.describe()}")


class HeldPair:
    """What `Plain.held_pair` saw: both streams, the counter looks `(chunks of the first,
    inflight, queued)`, and whether both looks found 1 in flight and 1 queued."""

    def __init__(self, first, second, looks, held):
        self.first, self.second, self.looks, self.held = first, second, looks, held

    def ordered(self):
        """The second's response started only after the first's ended."""
        f, s = self.first, self.second
        return f.t_end is not None and s.t_headers is not None and s.t_headers >= f.t_end - ORDER_SLACK_S

    def whole(self):
        """Both 200 with every chunk and the closing `[DONE]`."""
        return all(s.status == 200 and s.error is None and s.chunks >= MAX_TOKENS
                   and s.done_bytes.strip() == b"data: [DONE]" for s in (self.first, self.second))

    def describe(self):
        f, s = self.first, self.second
        return (f"(chunks of the first, inflight, queued) at each look: {self.looks[:3]}..."
                f"{self.looks[-1:]}; second's response started {_ms(s.t_headers, f.t_end)} after the "
                f"first ended; statuses {f.status}/{s.status}, chunks {f.chunks}/{s.chunks}, errors "
                f"{f.error}/{s.error}")


def _ms(a, b):
    if a is None or b is None:
        return "n/a"
    return f"{(a - b) * 1000:+.1f} ms"


def phase(h, lib):
    p = Plain(h, lib)
    p.start()
    p.run()
