#!/usr/bin/env python3
"""Check that every metric the Grafana dashboard queries is exported by flowgate (stdlib only).

    python3 scripts/check-dashboard.py --flowgate BIN --flowgate-sim BIN --envoy BIN
    python3 scripts/check-dashboard.py --metrics-url http://127.0.0.1:9090/metrics  # a running one
    python3 scripts/check-dashboard.py --list        # only print the names the dashboard queries

1. Extracts every metric name from every panel's `expr` (rows' nested panels included) and from
   the templating queries: string literals, label matchers `{...}`, ranges `[...]`, grouping
   clauses `by (...)` / `without (...)` / `on (...)` / `ignoring (...)` / `group_left (...)` and
   function calls are stripped; what is left are metric names.
2. Starts a gateway: two flowgate-sim backends, flowgate on a config with `detector: both` (so the
   scrape metrics exist) and a `workloads.caps` entry, and Envoy on deploy/envoy.yaml; sends a few
   requests through Envoy (mixed criticalities, a capped workload, one without context) so every
   family has samples, and waits for a good scrape of each backend.
3. Fetches /metrics and resolves each queried name against the exported families: a counter
   family `F` is queried as `F_total` (prometheus-client's encoder already writes `F_total` in
   the TYPE line: then as that name), a histogram as `F_bucket` / `F_sum` / `F_count`, a gauge as
   `F`. A name fails when no family matches it, or the family has no sample under that name.

Exit status 1 listing the missing names; 0 with one line per name otherwise.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import threading
import urllib.request

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gatewaylib as gw  # noqa: E402

DASHBOARD = os.path.join(gw.ROOT, "deploy", "grafana", "flowgate-dashboard.json")

# PromQL words that are not metric names (operators, modifiers, aggregations without a paren).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "atan2", "inf", "nan", "start", "end"}

SUFFIXES = {"counter": ["_total", ""], "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""], "summary": ["_sum", "_count", ""], "unknown": [""], "info": ["_info"],
            "stateset": [""], "gaugehistogram": ["_bucket", "_gsum", "_gcount"]}


def metric_names(expr):
    """The metric names one PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    e = re.sub(r"\{[^{}]*\}", " ", e)                                         # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                                       # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    # label_values(metric, label) / label_values(label): Grafana's templating function.
    e = re.sub(r"\blabel_values\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^()]*\)", r" \1 ", e)
    e = re.sub(r"\blabel_values\s*\([^(),]*\)", " ", e)
    # label_replace / label_join take label names as strings: already blanked above.
    names = set()
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(path):
    """[(where, expr)] for every panel target and templating query of the dashboard."""
    with open(path) as f:
        d = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r} ({t.get('refId')})", t["expr"]))
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and q and v.get("type") == "query":
            out.append((f"variable ${v.get('name')}", q))
    return out


def resolve(name, types, samples):
    """The exported family `name` belongs to, or None; and whether it has samples."""
    for family, typ in types.items():
        for suf in SUFFIXES.get(typ, [""]):
            if name == family + suf:
                return family, typ, bool(samples.get(name))
    return None, None, False


def gateway_metrics(args):
    workdir = args.workdir or tempfile.mkdtemp(prefix="flowgate-check-dashboard-")
    g = gw.Gateway(workdir, args.flowgate, args.flowgate_sim, args.envoy)
    try:
        g.start_sim("sim-a", "--max-num-seqs", "4")
        g.start_sim("sim-b", "--max-num-seqs", "4", "--speed", "0.5")
        backends = "".join(f"  - address: {gw.LOCALHOST}:{p}\n    max_inflight: 4\n    engine: vllm\n"
                           for p in g.sims.values())
        g.start_flowgate(f"""shards: 1
backends:
{backends}saturation:
  detector: both
  scrape_interval: 50ms
workloads:
  caps:
    - workload_id: "batch-*"
      max_criticality: 2
""")
        g.start_envoy()
        # Traffic through Envoy: decisions at several criticalities, a capped workload, and a
        # request without a context header (a default by reason).
        reqs = [("team-a", 5), ("team-b", 3), ("team-c", 1), ("batch-nightly", 5), (None, None)] * 2
        results = [None] * len(reqs)

        def send(i, w, c):
            results[i] = gw.completion(g.listen_port, w, c, max_tokens=4)
        ts = [threading.Thread(target=send, args=(i, w, c)) for i, (w, c) in enumerate(reqs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        bad = [r for r in results if r is None or r[0] != 200]
        if bad:
            raise RuntimeError(f"requests through Envoy failed: {bad}\n{g.log_tail('envoy')}")
        print(f"sent {len(reqs)} requests through Envoy (deploy/envoy.yaml): all 200")

        def scraped():
            _, s = g.metrics()
            ages = s.get("flowgate_backend_metrics_age_seconds", [])
            return len(ages) == len(g.sims) and s.get("flowgate_backend_kv_cache_usage")
        gw.wait_until("a good scrape of every backend", scraped, 20)
        g.check_alive()
        return gw.http_get(g.metrics_port, "/metrics")[1]
    finally:
        g.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", default=DASHBOARD)
    ap.add_argument("--flowgate")
    ap.add_argument("--flowgate-sim")
    ap.add_argument("--envoy")
    ap.add_argument("--metrics-url", help="check against this running flowgate instead")
    ap.add_argument("--workdir", help="logs and configs (default: a new temporary directory)")
    ap.add_argument("--list", action="store_true", help="print the queried names and exit")
    args = ap.parse_args()

    queries = dashboard_queries(args.dashboard)
    if not queries:
        print(f"{args.dashboard}: no queries found", file=sys.stderr)
        return 1
    wanted = {}  # name -> [where]
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            print(f"{where}: no metric name in {expr!r}", file=sys.stderr)
            return 1
        for n in names:
            wanted.setdefault(n, []).append(where)
    print(f"{args.dashboard}: {len(queries)} queries, {len(wanted)} metric names")
    if args.list:
        for n in sorted(wanted):
            print(n)
        return 0

    if args.metrics_url:
        with urllib.request.urlopen(args.metrics_url, timeout=5) as r:
            text = r.read().decode()
    else:
        for opt in ("flowgate", "flowgate_sim", "envoy"):
            if not getattr(args, opt):
                ap.error(f"--{opt.replace('_', '-')} is needed (or --metrics-url)")
        text = gateway_metrics(args)
    types, samples = gw.parse_metrics(text)

    missing = []
    for n in sorted(wanted):
        family, typ, has = resolve(n, types, samples)
        if family is None:
            missing.append(f"{n}: not exported (queried by {', '.join(wanted[n])})")
        elif not has:
            missing.append(f"{n}: {typ} family {family} has no samples (queried by {', '.join(wanted[n])})")
        else:
            print(f"  ok  {n}  ({typ} {family})")
    if missing:
        print(f"{len(missing)} dashboard metric(s) missing from /metrics:", file=sys.stderr)
        for m in missing:
            print(f"  MISSING {m}", file=sys.stderr)
        return 1
    print(f"all {len(wanted)} dashboard metrics are exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
