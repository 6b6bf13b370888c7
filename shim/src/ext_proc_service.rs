//! The gRPC side of the ext_proc service: `envoy.service.ext_proc.v3.ExternalProcessor/Process`
//! routed to [`FlowControl`], as the generated `ExternalProcessorServer` does, but with small
//! per-stream codec buffers.
//!
//! tonic gives every stream an encode buffer and a decode buffer of 8 KiB each (its default
//! `BufferSettings`), held for the stream's whole life. An LLM request holds its ext_proc stream
//! for the whole generation while its messages are small (request headers of a few hundred bytes,
//! CONTINUE answers of a few bytes), so those buffers were a large part of what an open stream
//! costs. Here they start at [`CODEC_BUFFER_BYTES`] and grow on demand (a large body chunk
//! reserves what it needs), which changes nothing on the wire.

use std::convert::Infallible;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic_prost::ProstCodec;

use crate::server::FlowControl;

/// Initial size of each stream's encode and decode buffers (tonic's default is 8 KiB); they grow
/// in steps of this size when a message needs more.
pub const CODEC_BUFFER_BYTES: usize = 1024;
/// Encoded answers buffered before tonic yields them to the connection (tonic's default).
pub const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;
/// The one method served.
pub const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

type Prost = ProstCodec<ProcessingResponse, ProcessingRequest>;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, CODEC_YIELD_THRESHOLD)
}

/// tonic's prost codec for the ext_proc messages, with buffers of [`CODEC_BUFFER_BYTES`] that yield at [`CODEC_YIELD_THRESHOLD`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SmallBufferCodec;

impl Codec for SmallBufferCodec {
    type Encode = ProcessingResponse;
    type Decode = ProcessingRequest;
    type Encoder = <Prost as Codec>::Encoder;
    type Decoder = <Prost as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        Prost::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Prost::raw_decoder(buffer_settings())
    }
}

/// The ext_proc gRPC service (tonic's defaults otherwise: no compression, 4 MiB messages at most).
#[derive(Clone, Debug)]
pub struct ExtProcServer {
    service: FlowControl,
}

impl ExtProcServer {
    /// Serve `service`.
    pub fn new(service: FlowControl) -> Self {
        ExtProcServer { service }
    }
}

impl NamedService for ExtProcServer {
    const NAME: &'static str = "envoy.service.ext_proc.v3.ExternalProcessor";
}

/// One `Process` call.
struct ProcessCall(FlowControl);

impl StreamingService<ProcessingRequest> for ProcessCall {
    type Response = ProcessingResponse;
    type ResponseStream = <FlowControl as ExternalProcessor>::ProcessStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<ProcessingRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.process(request).await })
    }
}

impl<B> Service<http::Request<B>> for ExtProcServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PROCESS_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let call = ProcessCall(self.service.clone());
        Box::pin(async move { Ok(Grpc::new(SmallBufferCodec).streaming(call, request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use flowgate_engine::config::EngineConfig;
    use flowgate_engine::runtime::Engine;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn other_paths_are_unimplemented() {
        let config = EngineConfig { shards: 1, ..Default::default() };
        let engine = Arc::new(Engine::start(config).unwrap());
        let service =
            FlowControl::new(engine.clone(), Arc::new(Metrics::new(100, 3)), CancellationToken::new());
        let mut server = ExtProcServer::new(service);
        let request = http::Request::builder()
            .uri("/envoy.service.ext_proc.v3.ExternalProcessor/Other")
            .body(tonic::body::Body::default())
            .unwrap();
        let response = server.call(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "12");
        engine.shutdown();
    }
}
