//! The `flowgate-sim` binary: prints its address, serves, exits 0 on SIGTERM and refuses bad
//! flags.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_flowgate-sim");

#[tokio::test]
async fn binary_logs_its_address_and_exits_zero_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--engine", "sglang", "--decode-step-ms", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().unwrap();
    // Read stderr to its end on a thread (the child never sees a closed pipe); the address
    // comes back over a channel.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("flowgate-sim listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(a.trim().parse::<std::net::SocketAddr>().expect("an address"));
                }
            }
        }
    });
    let addr = rx;
    let addr = tokio::time::timeout(DEADLINE, addr).await.expect("starts in time").expect("a listening line");
    assert_eq!(get(addr, "/health").await.status, 200);
    assert!(get(addr, "/metrics").await.text().contains("sglang:num_queue_reqs"));

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--engine", "tgi"][..],
        &["--stream-usage", "sometimes"],
        &["--speed", "0"],
        &["--max-num-seqs", "0"],
    ] {
        let out = Command::new(BIN).args(args).args(["--listen", "127.0.0.1:0"]).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!out.stderr.is_empty());
    }
}
