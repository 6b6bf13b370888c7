//! The two servers measured, each its own process (so its RSS is its own): the real `flowgate
//! serve` binary and a bare tonic ext_proc server (`flowgate-bench serve-bare`, [`serve_bare`]);
//! and reading a process's memory from `/proc`.

use crate::extproc::server::BareServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use serde::Serialize;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tonic::transport::server::TcpIncoming;

/// Longest a server may take from spawn to "listening".
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// What `serve-bare` prints on stdout once it listens, followed by the address.
const LISTENING: &str = "listening ";
/// The line `flowgate serve` logs once it serves, and the field holding the ext_proc address.
const FLOWGATE_SERVING: &str = "flowgate serving";
const GRPC_ADDR_FIELD: &str = "grpc_addr=";
pub(crate) const METRICS_ADDR_FIELD: &str = "metrics_addr=";

/// `flowgate-bench serve-bare`: serve a [`BareServer`] that names the destination on `listen` (tonic's defaults, no cap on
/// streams per connection, like flowgate) until stdin closes; prints `listening ADDR` first.
pub fn serve_bare(listen: &str) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        println!("{LISTENING}{addr}");
        io::stdout().flush()?;
        let stdin_closed = async {
            // The parent holds our stdin: its end (or its death) stops us.
            let _ = tokio::task::spawn_blocking(|| io::stdin().lines().count()).await;
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .max_concurrent_streams(None)
            .add_service(ExternalProcessorServer::new(BareServer { names_destination: true }))
            .serve_with_incoming_shutdown(incoming, stdin_closed)
            .await
            .map_err(io::Error::other)
    })
}

/// A server process under measurement.
pub struct Server {
    pub(crate) child: Child,
    /// Its ext_proc address, `host:port`.
    pub addr: String,
    /// Its metrics (and workload API) address, `host:port` (flowgate only).
    pub metrics_addr: Option<String>,
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its memory now.
    pub fn memory(&self) -> io::Result<Memory> {
        Memory::of(self.pid())
    }

    /// Stop it (it is measured, not shut down gracefully).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forward each line of `from` to `lines` until it ends (the reader must keep draining a child's
/// pipe so that its logging never blocks).
pub(crate) fn forward_lines(from: impl io::Read + Send + 'static, lines: std_mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let _ = lines.send(line);
        }
    });
}

/// Wait (bounded) for the line `parse` accepts; the address it returns.
pub(crate) fn await_address(
    what: &str,
    lines: &std_mpsc::Receiver<String>,
    parse: impl Fn(&str) -> Option<String>,
) -> io::Result<String> {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = parse(&line) {
                    return Ok(addr);
                }
                seen.push(line);
            }
            Err(e) => {
                let tail = seen.iter().rev().take(5).rev().cloned().collect::<Vec<_>>().join(" | ");
                return Err(io::Error::other(format!("{what} did not start ({e:?}): {tail}")));
            }
        }
    }
}

/// Spawn `cmd` (stdin and stdout closed, stderr piped and drained for good, so its logging never
/// blocks); the server (no address yet) and its stderr lines, for whoever waits on one. From here
/// on the child is killed on every path (the server's drop).
pub(crate) fn spawn_drained(
    what: &str,
    mut cmd: Command,
) -> io::Result<(Server, std_mpsc::Receiver<String>)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| io::Error::other(format!("cannot run {what}: {e}")))?;
    let (tx, rx) = std_mpsc::channel();
    let stderr = child.stderr.take().ok_or_else(|| io::Error::other(format!("{what}: no stderr pipe")))?;
    forward_lines(stderr, tx);
    Ok((Server { child, addr: String::new(), metrics_addr: None }, rx))
}

/// [`spawn_drained`], then wait (bounded) for the stderr line `parse` accepts: the server with
/// `addr` what `parse` returned.
pub(crate) fn spawn_listening(
    what: &str,
    cmd: Command,
    parse: impl Fn(&str) -> Option<String>,
) -> io::Result<Server> {
    let (mut server, lines) = spawn_drained(what, cmd)?;
    server.addr = await_address(what, &lines, parse)?;
    Ok(server)
}

/// What `flowgate-sim` prints once it listens, followed by its address.
const SIM_LISTENING: &str = "flowgate-sim listening on ";

/// The address in `flowgate-sim`'s "listening" line.
pub(crate) fn sim_addr(line: &str) -> Option<String> {
    line.strip_prefix(SIM_LISTENING).map(|a| a.trim().to_string())
}

/// The ext_proc address in `flowgate serve`'s "flowgate serving" log line.
pub fn flowgate_addr(line: &str) -> Option<String> {
    serving_field(line, GRPC_ADDR_FIELD)
}

/// The address in field `field` (`name=`) of the "flowgate serving" log line.
pub(crate) fn serving_field(line: &str, field: &str) -> Option<String> {
    if !line.contains(FLOWGATE_SERVING) {
        return None;
    }
    let at = line.find(field)? + field.len();
    let addr = line[at..].split_whitespace().next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.to_string())
}

/// Start `flowgate serve --config config` on loopback ports of its choosing.
pub fn start_flowgate(bin: &Path, config: &Path, env: &[(String, String)]) -> io::Result<Server> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    start_flowgate_with(cmd)
}

/// Spawn `cmd`, a `flowgate serve` command line, and wait for its "flowgate serving" line: the
/// server with its ext_proc and metrics addresses.
pub(crate) fn start_flowgate_with(cmd: Command) -> io::Result<Server> {
    // The whole line, so both of its addresses can be read from it.
    let mut server = spawn_listening("flowgate serve", cmd, |l| flowgate_addr(l).map(|_| l.to_string()))?;
    let line = std::mem::take(&mut server.addr);
    server.metrics_addr = serving_field(&line, METRICS_ADDR_FIELD);
    server.addr = flowgate_addr(&line).unwrap_or_default();
    Ok(server)
}

/// Start this binary's `serve-bare` subcommand.
pub fn start_bare(env: &[(String, String)]) -> io::Result<Server> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve-bare", "--listen", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (tx, rx) = std_mpsc::channel();
    forward_lines(child.stdout.take().expect("piped"), tx);
    let mut server = Server { child, addr: String::new(), metrics_addr: None };
    server.addr =
        await_address("serve-bare", &rx, |l| l.strip_prefix(LISTENING).map(|a| a.trim().to_string()))?;
    Ok(server)
}

/// The `flowgate` binary beside this one (`target/release/flowgate` for
/// `target/release/flowgate-bench`).
pub fn default_flowgate_bin() -> io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("flowgate"))
}

/// A process's memory, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Memory {
    /// Resident set (`VmRSS`).
    pub rss_kib: u64,
    /// Its anonymous part (heap, stacks, anonymous maps: `RssAnon`).
    pub anon_kib: u64,
    /// Its file-backed part (the binary's pages, shared libraries: `RssFile`).
    pub file_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl Memory {
    /// Read process `pid`'s.
    pub fn of(pid: u32) -> io::Result<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Memory::parse(&text).ok_or_else(|| io::Error::other(format!("/proc/{pid}/status: no VmRSS")))
    }

    /// Parse a `/proc/PID/status` text.
    pub fn parse(status: &str) -> Option<Memory> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Memory {
            rss_kib: field("VmRSS")?,
            anon_kib: field("RssAnon").unwrap_or(0),
            file_kib: field("RssFile").unwrap_or(0),
            threads: field("Threads").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_parsed() {
        let text = "Name:\tflowgate\nThreads:\t7\nVmRSS:\t   12345 kB\nRssAnon:\t    8000 kB\nRssFile:\t    4345 kB\n";
        assert_eq!(
            Memory::parse(text),
            Some(Memory { rss_kib: 12345, anon_kib: 8000, file_kib: 4345, threads: 7 })
        );
        assert_eq!(Memory::parse("Name:\tx\n"), None);
        let me = Memory::of(std::process::id()).expect("own status");
        assert!(me.rss_kib > 0 && me.threads > 0);
    }

    #[test]
    fn the_serving_line_gives_the_address() {
        let line = "2026-12-01T19:00:00.000Z  INFO flowgate::serve: flowgate serving grpc_addr=127.0.0.1:41234 metrics_addr=127.0.0.1:41235 tls=false";
        assert_eq!(flowgate_addr(line).as_deref(), Some("127.0.0.1:41234"));
        assert_eq!(serving_field(line, METRICS_ADDR_FIELD).as_deref(), Some("127.0.0.1:41235"));
        assert_eq!(flowgate_addr("INFO starting grpc_addr=127.0.0.1:1"), None);
        assert_eq!(flowgate_addr("flowgate serving grpc_addr=nonsense"), None);
    }
}
