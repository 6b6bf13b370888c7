//! The three processes under test, started here and killed when [`Stack`] drops (also on an
//! error or a panic unwinding; each child also gets `SIGKILL` should this process die first, via
//! `PR_SET_PDEATHSIG`): one `flowgate-sim`, one `flowgate serve` with that sim as its one backend,
//! and one Envoy in front of flowgate, rendered from the e2e template ([`template`]).

use super::template::{self, Ports};
use super::{client, Options};
use crate::cluster::procs::free_port;
use crate::streams::procs::{self, Server};
use flowgate_bench::child::die_with_parent;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The workload with a token quota: every response is read chunk by chunk for its usage.
pub const METERED: &str = "metered";
/// The workload no token rule needs: its requests get the mode override.
pub const PLAIN: &str = "plain";
/// The listener name (Envoy's stat prefix is `ingress_<name>`).
pub const LISTENER: &str = "bench";
/// Longest Envoy may take from spawn to `/ready` answering `LIVE`.
const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `/ready` is polled while Envoy starts (a readiness poll, not synchronisation).
const ENVOY_READY_POLL: Duration = Duration::from_millis(50);
/// What `flowgate-sim` prints on stderr once it listens, followed by the address.
/// Slots of the sim backend: far above any load here, so `max_inflight` never binds.
const BACKEND_MAX_INFLIGHT: u32 = 100_000;
/// `metered`'s token quota per minute: huge, so it never binds, but a token rule all the same.
const METERED_TOKENS_PER_MINUTE: u64 = 1_000_000_000_000;

/// The running stack. Dropped in field order: Envoy first, then flowgate, then the sim.
pub struct Stack {
    /// Envoy (its `addr` is the listener).
    pub envoy: Server,
    /// `flowgate serve` (its `addr` is the ext_proc address).
    pub flowgate: Server,
    /// `flowgate-sim`.
    pub sim: Server,
    /// Envoy's listener.
    pub listen: SocketAddr,
    /// Envoy's admin interface.
    pub admin: SocketAddr,
    /// flowgate's HTTP port (`/metrics`, `/api/v1/workloads`).
    pub metrics: SocketAddr,
    /// The sim's address.
    pub sim_addr: SocketAddr,
}

/// Make `cmd`'s child run on `cpus` only.
fn pin(cmd: &mut Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec; `pin_current_thread` builds a `cpu_set_t`
    // on the stack and calls sched_setaffinity(2), async-signal-safe; `cpus` was allocated before
    // the fork and is only read.
    unsafe {
        cmd.pre_exec(move || flowgate_engine::layout::pin_current_thread(&cpus));
    }
}

fn parse_addr(what: &str, addr: &str) -> io::Result<SocketAddr> {
    addr.trim().parse().map_err(|_| io::Error::other(format!("{what}: bad address {addr:?}")))
}

/// flowgate's config: the sim as its one backend, and a token quota on `metered` only.
pub fn flowgate_config(sim: SocketAddr) -> String {
    format!(
        "backends:\n  - address: {sim}\n    max_inflight: {BACKEND_MAX_INFLIGHT}\nworkloads:\n  quotas:\n    - workload_id: {METERED}\n      tokens_per_minute: {METERED_TOKENS_PER_MINUTE}\n"
    )
}

fn start_sim(o: &Options) -> io::Result<Server> {
    let mut cmd = Command::new(&o.sim_bin);
    cmd.args(["--listen", "127.0.0.1:0", "--tokens-per-chunk", "1", "--prefill-us-per-token", "1"])
        .args(["--decode-step-ms", &o.decode_step_ms.to_string()])
        .args(["--max-num-seqs", &o.max_num_seqs.to_string(), "--max-waiting", &o.max_num_seqs.to_string()])
        .env("RUST_LOG", "warn");
    if let Some((_, backend)) = &o.cpus {
        pin(&mut cmd, backend.clone());
    }
    die_with_parent(&mut cmd);
    procs::spawn_listening("flowgate-sim", cmd, procs::sim_addr)
}

fn start_flowgate(o: &Options, config: &Path) -> io::Result<(Server, SocketAddr)> {
    let mut cmd = Command::new(&o.flowgate_bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    if let Some((gateway, _)) = &o.cpus {
        pin(&mut cmd, gateway.clone());
    }
    die_with_parent(&mut cmd);
    let server = procs::start_flowgate_with(cmd)?;
    let metrics = server.metrics_addr.clone().unwrap_or_default();
    Ok((server, parse_addr("flowgate metrics", &metrics)?))
}

async fn envoy_live(admin: SocketAddr) -> bool {
    matches!(client::get(admin, "/ready").await, Ok((200, body)) if body.trim_ascii() == b"LIVE")
}

fn start_envoy(
    o: &Options,
    config: &Path,
    admin: SocketAddr,
    rt: &tokio::runtime::Runtime,
) -> io::Result<Server> {
    let mut cmd = Command::new(&o.envoy_bin);
    cmd.arg("-c")
        .arg(config)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        .args(["--concurrency", &o.envoy_concurrency.to_string()]);
    if let Some((gateway, _)) = &o.cpus {
        pin(&mut cmd, gateway.clone());
    }
    // Envoy prints no address line: it is ready when its admin `/ready` says LIVE.
    die_with_parent(&mut cmd);
    let (mut envoy, lines) = procs::spawn_drained("envoy", cmd)?;
    let tail = || {
        lines
            .try_iter()
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .take(8)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let deadline = Instant::now() + ENVOY_READY_TIMEOUT;
    loop {
        if let Some(status) = envoy.child.try_wait()? {
            return Err(io::Error::other(format!(
                "envoy exited during startup ({status}); config {}: {}",
                config.display(),
                tail()
            )));
        }
        if rt.block_on(envoy_live(admin)) {
            return Ok(envoy);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "envoy not LIVE within {} s: {}",
                ENVOY_READY_TIMEOUT.as_secs(),
                tail()
            )));
        }
        std::thread::sleep(ENVOY_READY_POLL);
    }
}

impl Stack {
    /// Start the sim, flowgate, then Envoy (configs written under `dir`); returns once Envoy is
    /// LIVE.
    pub fn start(o: &Options, dir: &Path, rt: &tokio::runtime::Runtime) -> io::Result<Stack> {
        for (what, bin) in
            [("flowgate-sim", &o.sim_bin), ("flowgate", &o.flowgate_bin), ("envoy", &o.envoy_bin)]
        {
            if !bin.is_file() {
                return Err(io::Error::other(format!("envoy-modes: no {what} binary at {}", bin.display())));
            }
        }
        let sim = start_sim(o)?;
        let sim_addr = parse_addr("flowgate-sim", &sim.addr)?;
        let fg_config = dir.join("envoy-modes-flowgate.yaml");
        std::fs::write(&fg_config, flowgate_config(sim_addr))?;
        let (flowgate, metrics) = start_flowgate(o, &fg_config)?;
        let grpc = parse_addr("flowgate", &flowgate.addr)?;
        let ports = Ports { admin: free_port()?, listen: free_port()?, grpc: grpc.port() };
        let yaml = template::render(template::E2E_TEMPLATE, LISTENER, &ports, "/dev/null")?;
        let envoy_config = dir.join("envoy-modes-envoy.yaml");
        std::fs::write(&envoy_config, yaml)?;
        let admin = SocketAddr::from(([127, 0, 0, 1], ports.admin));
        let listen = SocketAddr::from(([127, 0, 0, 1], ports.listen));
        let mut envoy = start_envoy(o, &envoy_config, admin, rt)?;
        envoy.addr = listen.to_string();
        Ok(Stack { envoy, flowgate, sim, listen, admin, metrics, sim_addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metered_has_a_token_quota() {
        let yaml = flowgate_config("127.0.0.1:8001".parse().expect("addr"));
        assert!(yaml.contains("address: 127.0.0.1:8001") && yaml.contains("workload_id: metered"));
        assert!(yaml.contains("tokens_per_minute:") && !yaml.contains(PLAIN));
    }
}
