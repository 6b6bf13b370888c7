#!/usr/bin/env python3
"""Tiny instrumented HTTP/1.1 upstream for the flowgate real-Envoy e2e test.

stdlib only. Every non-control request is logged in the order the server
STARTED handling it (a per-process sequence number plus CLOCK_MONOTONIC, which
is system-wide on Linux so logs of two upstreams can be merged).

Request headers understood (all optional):
  x-test-id:        opaque id copied into the log and the response
  x-test-delay-ms:  sleep this long before answering
  x-test-hold:      token; the request blocks until `POST /_release?token=T`
                    (or `?all=1`), or HOLD_LIMIT seconds pass (safety net)

Control endpoints (never logged):
  GET  /_log      -> {"name", "port", "max_concurrent", "inflight", "entries": [...]}
  GET  /_holding  -> {"tokens": [tokens of requests currently blocked on a hold]}
  POST /_release?token=T | ?all=1
  POST /_reset    -> clears the log, max_concurrent and released tokens
  GET  /_health   -> 200
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOLD_LIMIT = 120.0  # seconds; a held request never blocks longer than this


class State:
    def __init__(self, name, port):
        self.name = name
        self.port = port
        self.lock = threading.Lock()
        self.seq = 0
        self.entries = []
        self.inflight = 0
        self.max_concurrent = 0
        self.holds = {}  # token -> threading.Event
        self.holding = {}  # token -> count of requests blocked on it
        self.release_all = False

    def hold_event(self, token):
        with self.lock:
            ev = self.holds.get(token)
            if ev is None:
                ev = threading.Event()
                if self.release_all:
                    ev.set()
                self.holds[token] = ev
            return ev


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-upstream"

    def log_message(self, fmt, *args):  # keep stderr quiet
        pass

    # -- helpers ---------------------------------------------------------
    def _send_json(self, code, obj, extra_headers=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self):
        n = int(self.headers.get("content-length") or 0)
        if n > 0:
            self.rfile.read(n)

    # -- dispatch --------------------------------------------------------
    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _handle(self):
        st: State = self.server.state
        self._drain_body()
        url = urlsplit(self.path)
        if url.path.startswith("/_"):
            return self._control(st, url)

        t_ns = time.monotonic_ns()
        with st.lock:
            st.seq += 1
            seq = st.seq
            st.inflight += 1
            st.max_concurrent = max(st.max_concurrent, st.inflight)
            ctx_raw = self.headers.get("x-workload-context")
            entry = {
                "seq": seq,
                "t_ns": t_ns,
                "method": self.command,
                "path": self.path,
                "test_id": self.headers.get("x-test-id"),
                "workload_context": ctx_raw,
                "destination": self.headers.get("x-gateway-destination-endpoint"),
            }
            try:
                ctx = json.loads(ctx_raw) if ctx_raw else {}
                entry["workload_id"] = ctx.get("workload_id")
                entry["criticality"] = ctx.get("criticality")
            except (ValueError, AttributeError):
                entry["workload_id"] = entry["criticality"] = None
            st.entries.append(entry)
        try:
            token = self.headers.get("x-test-hold")
            if token:
                ev = st.hold_event(token)
                with st.lock:
                    st.holding[token] = st.holding.get(token, 0) + 1
                try:
                    ev.wait(HOLD_LIMIT)
                finally:
                    with st.lock:
                        st.holding[token] -= 1
                        if st.holding[token] <= 0:
                            del st.holding[token]
            delay = self.headers.get("x-test-delay-ms")
            if delay:
                time.sleep(max(0.0, float(delay)) / 1000.0)
        finally:
            # Count the request as finished *before* the response bytes go out:
            # the next request can only be admitted after Envoy has seen the
            # end of this response, so this never under-reports real overlap.
            with st.lock:
                st.inflight -= 1
        self._send_json(
            200,
            {"upstream": st.name, "path": self.path, "seq": seq, "test_id": entry["test_id"]},
            {"x-upstream-name": st.name},
        )

    def _control(self, st: State, url):
        q = parse_qs(url.query)
        if url.path == "/_health":
            return self._send_json(200, {"ok": True, "name": st.name})
        if url.path == "/_log":
            with st.lock:
                return self._send_json(200, {
                    "name": st.name,
                    "port": st.port,
                    "max_concurrent": st.max_concurrent,
                    "inflight": st.inflight,
                    "entries": list(st.entries),
                })
        if url.path == "/_holding":
            with st.lock:
                toks = sorted(t for t, n in st.holding.items() for _ in range(n))
            return self._send_json(200, {"tokens": toks})
        if url.path == "/_release":
            with st.lock:
                if q.get("all"):
                    st.release_all = True
                    evs = list(st.holds.values())
                else:
                    evs = []
                    for tok in q.get("token", []):
                        ev = st.holds.get(tok)
                        if ev is None:
                            ev = st.holds[tok] = threading.Event()
                        evs.append(ev)
            for ev in evs:
                ev.set()
            return self._send_json(200, {"released": len(evs)})
        if url.path == "/_reset":
            with st.lock:
                st.entries.clear()
                st.max_concurrent = st.inflight
                st.release_all = False
                st.holds = {t: ev for t, ev in st.holds.items() if not ev.is_set()}
            return self._send_json(200, {"ok": True})
        return self._send_json(404, {"error": "unknown control path"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    srv = Server((args.host, args.port), Handler)
    srv.state = State(args.name, srv.server_address[1])
    print(f"upstream {args.name} listening on {args.host}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
