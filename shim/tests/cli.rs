//! The `flowgate` binary: `check-config` output and exit codes, `serve` start-up errors, and a
//! real `serve` process stopped by SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn flowgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowgate"))
}

/// Write `yaml` to a fresh file under the target's temp dir.
fn config_file(name: &str, yaml: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flowgate-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.code().expect("exited"), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

#[test]
fn check_config_accepts_the_embedded_default() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/src/default.yaml");
    let (code, out, err) = run(flowgate().args(["check-config", default]));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: listen 127.0.0.1:9002, metrics 127.0.0.1:9090"), "{out}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn check_config_prints_one_path_and_reason_per_line() {
    let file = config_file(
        "bad-values",
        "backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 2000000\nqueue:\n  ttl: 2h\nscoring:\n  rescore_interval: 0s\n",
    );
    let (code, out, err) = run(flowgate().arg("check-config").arg(&file));
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with("backends[0].max_inflight: "), "{err}");
    assert!(lines[1].starts_with("queue.ttl: "), "{err}");
    assert!(lines[2].starts_with("scoring.rescore_interval: "), "{err}");
}

/// `max_inflight: 0` is no concurrency cap (DESIGN.md), so it is valid under every detector; under
/// `concurrency` nothing then limits the backend, which `check-config` says as a warning.
#[test]
fn check_config_accepts_an_uncapped_backend_and_warns_under_detector_concurrency() {
    let uncapped = "backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 0\n  - address: 10.0.0.8:8000\n";
    let (code, out, err) = run(flowgate().arg("check-config").arg(config_file("uncapped", uncapped)));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: "), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(
            "warning: backends[0].max_inflight: 0 (no cap) under saturation.detector concurrency"
        ),
        "{err}"
    );
    assert!(lines[1].starts_with("warning: backends[1].max_inflight: "), "{err}");
    let metered = format!("{uncapped}saturation:\n  detector: both\n");
    let (code, _, err) = run(flowgate().arg("check-config").arg(config_file("uncapped-both", &metered)));
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn check_config_names_bad_durations_and_unknown_keys() {
    let file = config_file("bad-duration", "scoring:\n  wait_cap: 5 parsecs\n");
    let (code, _, err) = run(flowgate().arg("check-config").arg(&file));
    assert_eq!(code, 1);
    assert!(err.starts_with("scoring.wait_cap: \"5 parsecs\" is not a duration"), "{err}");
    let file = config_file("unknown-key", "queue:\n  max_requets: 5\n");
    let (code, _, err) = run(flowgate().arg("check-config").arg(&file));
    assert_eq!(code, 1);
    assert!(err.starts_with("queue.max_requets: unknown key"), "{err}");
}

#[test]
fn check_config_of_a_missing_file_fails() {
    let (code, _, err) = run(flowgate().args(["check-config", "/nonexistent/flowgate.yaml"]));
    assert_eq!(code, 1);
    assert!(err.starts_with("/nonexistent/flowgate.yaml: cannot read"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(flowgate().arg("check-config")).0, 2);
    assert_eq!(run(flowgate().args(["serve", "--listen", "nowhere"])).0, 2);
    assert_eq!(run(&mut flowgate()).0, 2);
}

#[test]
fn serve_refuses_an_invalid_config() {
    let file = config_file("serve-bad", "workloads:\n  default_criticality: 9\n");
    let (code, _, err) = run(flowgate().arg("serve").arg("--config").arg(&file));
    assert_eq!(code, 1);
    assert!(err.contains("workloads.default_criticality: "), "{err}");
}

#[test]
fn serve_reports_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) =
        run(flowgate().args(["serve", "--listen", &addr, "--metrics-listen", "127.0.0.1:0"]));
    assert_eq!(code, 1);
    assert!(err.contains(&format!("listen: cannot listen on {addr}")), "{err}");
}

/// A minimal HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

#[test]
fn serve_runs_until_sigterm_and_exits_cleanly() {
    let mut child = flowgate()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (grpc, metrics) = loop {
        let line = lines.next().expect("serve logged its addresses").unwrap();
        if line.contains("flowgate serving") {
            break (field(&line, "grpc_addr").unwrap(), field(&line, "metrics_addr").unwrap());
        }
    };
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok".to_string()));
    let (status, body) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("flowgate_requests_total"), "{body}");
    assert!(TcpStream::connect(grpc).is_ok());

    // Without a config file, SIGHUP has nothing to reload: logged, and serving goes on.
    signal(&child, "-HUP");
    loop {
        let line = lines.next().expect("serve logged the SIGHUP").unwrap();
        if line.contains("no config file to reload") {
            break;
        }
    }
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok".to_string()));

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("SIGTERM received")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("shut down")), "{rest:?}");
}

fn signal(child: &std::process::Child, sig: &str) {
    let kill = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
}

/// Read `lines` until one contains `needle`; every line read is kept in `seen`.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!("no log line with {needle:?}; saw {seen:#?}"),
        }
    }
}

fn metric(metrics: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(metrics, "/metrics");
    flowgate::metrics::sample(&body, series).unwrap_or_else(|| panic!("{series} missing"))
}

#[test]
fn serve_reloads_its_config_on_sighup_and_when_the_watched_file_changes() {
    let yaml = |max: u32| {
        format!("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.9.0.1:8000\n    max_inflight: {max}\n")
    };
    let path = config_file("reload", &yaml(8));
    let mut child = flowgate()
        .args(["serve", "--config", path.to_str().unwrap(), "--watch-config"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let serving = wait_line(&lines, "flowgate serving", &mut seen);
    let metrics = field(&serving, "metrics_addr").unwrap();
    let max_inflight = || {
        let (_, body) = http_get(metrics, "/api/v1/backends");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v[0]["max_inflight"].as_u64().unwrap()
    };

    // SIGHUP: reloaded (the same file), counted.
    let sent = Instant::now();
    signal(&child, "-HUP");
    wait_line(&lines, "config reloaded", &mut seen);
    println!("SIGHUP to reload in force: {:?}", sent.elapsed());
    assert_eq!(metric(metrics, r#"flowgate_config_reloads_total{result="ok"}"#), 1.0);

    // A change of the watched file: applied without a signal.
    let aside = path.with_extension("next");
    std::fs::write(&aside, yaml(4)).unwrap();
    let changed = Instant::now();
    std::fs::rename(&aside, &path).unwrap();
    wait_line(&lines, "config file changed", &mut seen);
    wait_line(&lines, "config reloaded", &mut seen);
    println!("watched change to reload in force: {:?}", changed.elapsed());
    assert_eq!(max_inflight(), 4);

    // A bad file is refused whole, with its `path: reason`, and the running config stays.
    std::fs::write(&aside, format!("{}queue:\n  ttl: 30\n", yaml(2))).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    let refused = wait_line(&lines, "config reload refused:", &mut seen);
    assert!(refused.contains("queue.ttl"), "{refused}");
    wait_line(&lines, "the running config keeps serving", &mut seen);
    assert_eq!(metric(metrics, r#"flowgate_config_reloads_total{result="error"}"#), 1.0);
    assert_eq!(max_inflight(), 4);
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok".to_string()));

    signal(&child, "-TERM");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}
