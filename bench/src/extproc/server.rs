//! The two servers under test, each on its own runtime: the bare ext_proc server that answers
//! CONTINUE at once (the baseline) and an in-process flowgate.

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use flowgate::config::ServeConfig;
use flowgate::serve::{self, Running};
use flowgate::usage_meter::ResponseWatch;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Status, Streaming};

/// The backend of the in-process flowgate: never contacted, only named in answers.
pub(crate) const BACKEND: &str = "127.0.0.1:8000";

/// A bare ext_proc server: every message is answered CONTINUE at once (no mutation), except that
/// with `names_destination` the request headers get the destination header set (what flowgate's
/// dispatch answer carries, [`flowgate::server::dispatched`]); nothing is kept per stream, which
/// closes when the client's side does.
#[derive(Clone, Copy, Debug, Default)]
pub struct BareServer {
    /// Answer the request headers as flowgate's dispatch does (`streams`), not with CONTINUE.
    pub names_destination: bool,
}

#[tonic::async_trait]
impl ExternalProcessor for BareServer {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let names_destination = self.names_destination;
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let response = match &message.request {
                    Some(Msg::RequestHeaders(_)) if names_destination => {
                        flowgate::server::dispatched(BACKEND, vec![], ResponseWatch::End)
                    }
                    _ => match continue_reply(&message) {
                        Some(reply) => ProcessingResponse { response: Some(reply), ..Default::default() },
                        None => continue,
                    },
                };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// The CONTINUE answer to `message` (none for an empty message).
pub fn continue_reply(message: &ProcessingRequest) -> Option<Reply> {
    Some(match message.request.as_ref()? {
        Msg::RequestHeaders(_) => Reply::RequestHeaders(HeadersResponse::default()),
        Msg::ResponseHeaders(_) => Reply::ResponseHeaders(HeadersResponse::default()),
        Msg::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
        Msg::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
        Msg::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Msg::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    })
}

pub(super) enum Server {
    Baseline { rt: Runtime, stop: oneshot::Sender<()>, task: tokio::task::JoinHandle<()> },
    Flowgate { rt: Runtime, running: Running },
}

fn server_runtime(name: &str) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(name).build()
}

pub(super) fn start_baseline() -> io::Result<(Server, SocketAddr)> {
    let rt = server_runtime("extproc-baseline")?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        // Like flowgate's server: no cap on streams per connection.
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(None)
            .add_service(ExternalProcessorServer::new(BareServer::default()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            eprintln!("extproc: baseline server: {e}");
        }
    });
    Ok((Server::Baseline { rt, stop, task }, addr))
}

pub(super) fn start_flowgate(shards: usize) -> io::Result<(Server, SocketAddr)> {
    let rt = server_runtime("extproc-flowgate")?;
    // One backend with far more slots than requests in flight: capacity is always free.
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: {shards}\nbackends:\n  - address: {BACKEND}\n    max_inflight: 100000\nqueue:\n  max_requests: 100000\n"
    );
    let mut config = ServeConfig::from_yaml(&yaml)
        .map_err(|e| io::Error::other(format!("extproc: flowgate config: {e:?}")))?;
    if let Some(spin) = flowgate_bench::baseline::spin_before_park() {
        config.engine.spin_before_park = spin;
    }
    let running = rt
        .block_on(serve::start(config))
        .map_err(|e| io::Error::other(format!("extproc: flowgate did not start: {e}")))?;
    let addr = running.grpc_addr();
    Ok((Server::Flowgate { rt, running }, addr))
}

impl Server {
    pub(super) fn stop(self) {
        match self {
            Server::Baseline { rt, stop, task } => {
                let _ = stop.send(());
                let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
                rt.shutdown_timeout(Duration::from_secs(1));
            }
            Server::Flowgate { rt, running } => {
                rt.block_on(running.shutdown());
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}
