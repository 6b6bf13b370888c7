"""The e2e test's TLS pair: one Envoy talking to one flowgate over mTLS (stdlib + openssl CLI).

    client --HTTP/1.1--> Envoy "tls" listener --ext_proc gRPC over mTLS--> flowgate "tls"
    Envoy router --> ORIGINAL_DST --> upstream up-a | up-b   (the same upstreams as the others)

Certificates are made for this run with the `openssl` CLI in a fresh temp dir under the workdir:
a CA, flowgate's server certificate (SAN localhost and 127.0.0.1) and Envoy's client
certificate, both signed by it, plus a second CA and a client certificate it signed (which
flowgate must refuse). flowgate's config has `tls: {cert, key, client_ca: <the CA>}`; Envoy's ext_proc
cluster gets the transport socket of e2e/envoy-tls.yaml.tmpl.

Checks (prefix "tls"), run by `phase(harness, lib)` where lib is the run_e2e module:
  tls0 openssl made the certificates
  tls1 check-config accepts the mTLS config (summary says "(mTLS)") and names `tls.key` for a
       config whose key file is garbage
  tls2 flowgate-tls logs tls=true mtls=true at startup; envoy --mode validate accepts the config
  tls3 N requests through Envoy all get 200 and each upstream saw x-gateway-destination-endpoint
       == its own address
  tls4 Envoy's ext_proc cluster made TLS handshakes (ssl.handshake > 0) and none failed
  tls5 flowgate refuses a plaintext HTTP/2 connection, a TLS client without a certificate and a
       client certificate from another CA; a client with a certificate from its CA is served
"""
import os
import signal
import socket
import ssl
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "envoy-tls.yaml.tmpl")
# The client preface and an empty SETTINGS frame: an HTTP/2 server answers with its own SETTINGS.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
OPENSSL_TIMEOUT = 30
PROBE_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# certificates (openssl CLI)
# ---------------------------------------------------------------------------

def _openssl(args, cwd):
    out = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True,
                         timeout=OPENSSL_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {out.stderr.strip()[-500:]}")


def _ca(d, name, cn):
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
              "-subj", f"/CN={cn}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)


def _leaf(d, name, cn, ca, ext):
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + ext + "\n")
    _openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}"], d)
    _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
              "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
              "-extfile", f"{name}.ext"], d)


def make_certs(parent):
    """A fresh dir with ca, server, client (from ca), other-ca and stranger (from other-ca)."""
    d = tempfile.mkdtemp(prefix="tls-", dir=parent)
    _ca(d, "ca", "flowgate e2e ca")
    _leaf(d, "server", "flowgate", "ca",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _leaf(d, "client", "envoy", "ca", "extendedKeyUsage=clientAuth")
    _ca(d, "other-ca", "someone else's ca")
    _leaf(d, "stranger", "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return d


# ---------------------------------------------------------------------------
# probes of flowgate's listener
# ---------------------------------------------------------------------------

def h2_probe(port, certs=None, client=None):
    """Open a connection to flowgate's gRPC port (TLS when certs is given, presenting `client`'s
    certificate when named), send the HTTP/2 preface; ("served", ...) when a SETTINGS frame comes
    back, else ("refused", why)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT)
    except OSError as e:
        return "refused", f"connect: {e}"
    try:
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(os.path.join(certs, "ca.crt"))
            ctx.set_alpn_protocols(["h2"])
            if client:
                ctx.load_cert_chain(os.path.join(certs, f"{client}.crt"),
                                    os.path.join(certs, f"{client}.key"))
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                alert = " (a TLS alert record)" if head[:1] == b"\x15" else ""
                return "refused", f"connection closed after {len(head)} byte(s){alert}"
            head += chunk
        if head[3] == 0x04:
            return "served", "HTTP/2 SETTINGS received"
        return "refused", f"unexpected bytes {head!r}"
    except (OSError, ssl.SSLError) as e:
        return "refused", f"{type(e).__name__}: {e}"
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# the phase
# ---------------------------------------------------------------------------

def tls_yaml(certs, key="server.key"):
    def p(name):
        return os.path.join(certs, name)

    return (f"tls:\n  cert: {p('server.crt')}\n  key: {p(key)}\n"
            f"  client_ca: {p('ca.crt')}\n")


def render_envoy(h, lib, certs, admin_port, listen_port, grpc_port):
    """e2e/envoy.yaml.tmpl with one listener "tls", plus the transport socket of
    envoy-tls.yaml.tmpl in its ext_proc cluster."""
    path = os.path.join(h.workdir, "envoy-tls.yaml")
    lib.render_envoy_config(h.args.envoy_template, path, admin_port,
                            [("tls", listen_port, grpc_port)], True,
                            os.path.join(h.workdir, "envoy-tls_access.log"))
    with open(TEMPLATE) as f:
        snippet = f.read().split("#@@ transport_socket\n", 1)[1]
    for k, v in {"CERT": "client.crt", "KEY": "client.key", "CA": "ca.crt"}.items():
        snippet = snippet.replace("${" + k + "}", os.path.join(certs, v))
    assert "${" not in snippet, snippet
    with open(path) as f:
        text = f.read()
    anchor = "  - name: flowgate_ext_proc_tls\n"
    assert text.count(anchor) == 1, "the ext_proc cluster of the tls listener not found once"
    with open(path, "w") as f:
        f.write(text.replace(anchor, anchor + snippet))
    return path


def phase(h, lib):
    """The TLS pair's checks; h is the run_e2e Harness."""
    admin, listen, grpc, metrics = lib.free_ports(4)
    try:
        certs = make_certs(h.workdir)
    except Exception as e:
        h.check("tls0 openssl made CA, server and client certificates", False, str(e))
        return
    h.check("tls0 openssl made CA, server and client certificates", True, certs)

    cfg_text = lib.flowgate_config(grpc, metrics, [h.up_a, h.up_b], 100, shards=h.args.shards,
                                   extra=tls_yaml(certs))
    cfg = os.path.join(h.workdir, "flowgate-tls.yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    ok = subprocess.run([h.args.flowgate, "check-config", cfg], capture_output=True, text=True,
                        timeout=30)
    with open(os.path.join(certs, "garbage.key"), "w") as f:
        f.write("not a key\n")
    bad = os.path.join(h.workdir, "flowgate-tls-bad.yaml")
    with open(bad, "w") as f:
        f.write(lib.flowgate_config(grpc, metrics, [h.up_a, h.up_b], 100,
                                    extra=tls_yaml(certs, key="garbage.key")))
    bad_out = subprocess.run([h.args.flowgate, "check-config", bad], capture_output=True,
                             text=True, timeout=30)
    h.check("tls1 check-config: mTLS config ok, a garbage key is a tls.key error",
            ok.returncode == 0 and "(mTLS)" in ok.stdout
            and bad_out.returncode == 1 and bad_out.stderr.startswith("tls.key: "),
            f"{ok.stdout.strip()[:60]}... | {bad_out.stderr.strip()}")

    h.start_flowgate("tls", grpc, metrics, 100, config=cfg_text)
    h.wait_flowgate("tls", metrics)
    # /healthz may answer before the startup line is written: wait for the line itself.
    def serving_line():
        return [line for line in h.procs.log_tail("flowgate-tls", 50).splitlines()
                if "flowgate serving" in line]

    try:
        started = lib.wait_until("flowgate-tls startup line", serving_line, 10)
    except TimeoutError:
        started = []
    envoy_cfg = render_envoy(h, lib, certs, admin, listen, grpc)
    valid = h.validate_envoy_config(envoy_cfg, "tls config")
    h.check("tls2 flowgate-tls started with tls=true mtls=true",
            started and "tls=true" in started[0] and "mtls=true" in started[0],
            started[0] if started else h.procs.log_tail("flowgate-tls", 5))
    if not valid:
        return
    try:
        start_envoy(h, lib, envoy_cfg, admin)
        through_envoy(h, lib, listen, admin)
    finally:
        h.procs.kill("envoy-tls", signal.SIGTERM, wait=5.0)

    probes = {
        "plaintext HTTP/2": h2_probe(grpc),
        "TLS without a client certificate": h2_probe(grpc, certs),
        "TLS with another CA's client certificate": h2_probe(grpc, certs, "stranger"),
        "TLS with the CA's client certificate": h2_probe(grpc, certs, "client"),
    }
    want = {name: ("served" if name.endswith("the CA's client certificate") else "refused")
            for name in probes}
    h.check("tls5 flowgate refuses plaintext, no client cert and a stranger's cert; serves its CA's",
            all(probes[n][0] == want[n] for n in probes),
            "; ".join(f"{n}: {r} ({why})" for n, (r, why) in probes.items()))
    h.procs.kill("flowgate-tls", signal.SIGTERM, wait=10.0)


def start_envoy(h, lib, cfg, admin):
    h.procs.start("envoy-tls", [h.args.envoy, "-c", cfg, "--disable-hot-restart",
                                "--concurrency", "1", "--log-level", h.args.envoy_log_level])

    def ready():
        if not h.procs.alive("envoy-tls"):
            raise lib.SkipRest("envoy-tls exited during startup:\n" + h.procs.log_tail("envoy-tls"))
        st, _, body = lib.http_req(admin, "GET", "/ready", timeout=2)
        return st == 200 and body.strip() == b"LIVE"

    lib.wait_until("envoy-tls admin /ready == LIVE", ready, 30)


def through_envoy(h, lib, listen, admin, n=10):
    h.reset_upstreams()
    reqs = [lib.Req(listen, f"tls-{i}", f"wl-tls-{i % 2}", (i % 5) + 1) for i in range(n)]
    for r in reqs:
        r.start()
    hung = lib.join_all(reqs, 60)
    bad = [r.describe() for r in reqs if r.status != 200]
    wrong, seen = [], 0
    for name, lg in h.upstream_logs().items():
        want = f"{lib.LOCALHOST}:{h.upstreams[name]}"
        for e in lg["entries"]:
            if e["test_id"].startswith("tls-"):
                seen += 1
                if e["destination"] != want:
                    wrong.append((name, e["test_id"], e["destination"]))
    h.check(f"tls3 {n} requests through Envoy -> flowgate over mTLS: 200, {lib.DEST_HEADER} set",
            not hung and not bad and seen == n and not wrong,
            f"non-200 {bad[:3]}, mismatches {wrong[:3]}, at upstreams {seen}/{n}")
    st, _, body = lib.http_req(admin, "GET", "/stats?filter=flowgate_ext_proc_tls\\.ssl\\.", timeout=5)
    stats = {}
    for line in body.decode(errors="replace").splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit():
            stats[k.strip()] = int(v)
    handshakes = stats.get("cluster.flowgate_ext_proc_tls.ssl.handshake", 0)
    failures = sum(v for k, v in stats.items() if "fail" in k or k.endswith(".ssl.connection_error"))
    h.check("tls4 Envoy's ext_proc cluster completed TLS handshakes, none failed",
            st == 200 and handshakes > 0 and failures == 0,
            f"ssl.handshake {handshakes}, failures {failures}")
