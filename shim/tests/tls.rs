//! TLS and mTLS on the ext_proc listener, through the gRPC protocol: a server started in-process
//! with certificates made at test time (a CA, a server certificate for 127.0.0.1 / localhost, a
//! client certificate from that CA and one from another CA), and tonic clients with and without
//! TLS, with and without a client certificate.
//!
//! A refused client may learn of it at the TLS handshake, at the HTTP/2 handshake or on its first
//! stream (with TLS 1.3 the server checks a client certificate after the client has finished its
//! side of the handshake), so a refusal is "no answer ever arrives, an error does", within the
//! deadline.

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use certs::{Ca, Leaf, TempDir};
use common::{context, destination, request_headers, start_server, Client, BACKEND};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use flowgate::config::ServeConfig;
use flowgate::serve::{self, ServeError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Longest wait for any expected event.
const DEADLINE: Duration = Duration::from_secs(20);

/// A CA and a server certificate it signed, written to a temp dir; plus client certificates.
struct Pki {
    dir: TempDir,
    ca: Ca,
    other_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("tls-test");
        let ca = Ca::new("flowgate test ca");
        let server = ca.server();
        dir.write("server.crt", &server.cert_pem);
        dir.write("server.key", &server.key_pem);
        dir.write("ca.crt", &ca.cert_pem);
        Pki { dir, ca, other_ca: Ca::new("someone else's ca") }
    }

    /// The `tls:` section; with `mtls`, `client_ca` is this CA.
    fn yaml(&self, mtls: bool) -> String {
        let p = |name: &str| self.dir.path().join(name).display().to_string();
        let client_ca = if mtls { p("ca.crt") } else { String::new() };
        format!(
            "tls:\n  cert: {:?}\n  key: {:?}\n  client_ca: {client_ca:?}\n",
            p("server.crt"),
            p("server.key")
        )
    }
}

/// How a test client connects.
enum Dial<'a> {
    Plaintext,
    /// TLS, trusting `trust`, presenting `identity` when given.
    Tls {
        trust: &'a Ca,
        identity: Option<&'a Leaf>,
    },
}

/// Connect to `addr` and send one request's headers: the destination it is dispatched to, or
/// the error that stopped it (a connection error or a failed stream).
async fn request(addr: SocketAddr, dial: Dial<'_>) -> Result<String, String> {
    let attempt = async {
        let endpoint = match dial {
            Dial::Plaintext => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
            Dial::Tls { trust, identity } => {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&trust.cert_pem))
                    .domain_name("localhost");
                if let Some(leaf) = identity {
                    tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
                }
                Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap()
            }
        };
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let mut client: Client = ExternalProcessorClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        tx.send(request_headers(vec![context("tls", 3)])).await.unwrap();
        let mut answers =
            client.process(ReceiverStream::new(rx)).await.map_err(|e| format!("open: {e:?}"))?.into_inner();
        let answer = answers.message().await.map_err(|e| format!("answer: {e:?}"))?;
        let answer = answer.ok_or("stream ended without an answer")?;
        // Dropping `tx` and `answers` closes the stream and frees the slot.
        destination(&answer).ok_or_else(|| format!("not dispatched: {answer:?}"))
    };
    tokio::time::timeout(DEADLINE, attempt).await.expect("neither an answer nor an error before the deadline")
}

fn refused(result: Result<String, String>, who: &str) {
    assert!(result.is_err(), "{who} was served: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_is_dispatched_and_a_plaintext_client_is_refused() {
    let pki = Pki::new();
    let running = start_server(1, 8, &pki.yaml(false)).await;
    let addr = running.grpc_addr();

    let served = request(addr, Dial::Tls { trust: &pki.ca, identity: None }).await;
    assert_eq!(served.as_deref(), Ok(BACKEND));
    refused(request(addr, Dial::Plaintext).await, "a plaintext client");
    // A client certificate is not asked for, and does no harm.
    let client = pki.ca.client("envoy");
    let served = request(addr, Dial::Tls { trust: &pki.ca, identity: Some(&client) }).await;
    assert_eq!(served.as_deref(), Ok(BACKEND));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_presents_the_configured_certificate() {
    let pki = Pki::new();
    let running = start_server(1, 8, &pki.yaml(false)).await;
    // A client that trusts only another CA does not accept the server.
    let result = request(running.grpc_addr(), Dial::Tls { trust: &pki.other_ca, identity: None }).await;
    refused(result, "a client trusting another CA");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served() {
    let pki = Pki::new();
    let running = start_server(1, 8, &pki.yaml(true)).await;
    let addr = running.grpc_addr();

    refused(request(addr, Dial::Plaintext).await, "a plaintext client");
    refused(
        request(addr, Dial::Tls { trust: &pki.ca, identity: None }).await,
        "a client without a certificate",
    );
    let stranger = pki.other_ca.client("stranger");
    let result = request(addr, Dial::Tls { trust: &pki.ca, identity: Some(&stranger) }).await;
    refused(result, "a client with a certificate from another CA");
    // The refusals did not hurt the listener: a client with a good certificate is served.
    let envoy = pki.ca.client("envoy");
    let served = request(addr, Dial::Tls { trust: &pki.ca, identity: Some(&envoy) }).await;
    assert_eq!(served.as_deref(), Ok(BACKEND));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_tls_files_gone_since_the_config_was_read() {
    let pki = Pki::new();
    let yaml = format!("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n{}", pki.yaml(false));
    let config = ServeConfig::from_yaml(&yaml).expect("valid while the files are there");
    std::fs::remove_file(pki.dir.path().join("server.key")).unwrap();
    match serve::start(config).await {
        Err(ServeError::Config(errors)) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, "tls.key");
            assert!(errors[0].reason.starts_with("cannot read "), "{errors:?}");
        }
        other => panic!("expected a tls.key error, got {other:?}"),
    }
}
