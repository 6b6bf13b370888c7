"""The e2e test's HTTP client side: one-shot requests, JSON reads, deadline-bounded waits on a
real signal, client threads (`Req`) through Envoy, and a Prometheus text parser (stdlib only)."""
import http.client
import json
import threading
import time

from common import DEST_HEADER, LOCALHOST, GlobalTimeout, SkipRest



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
