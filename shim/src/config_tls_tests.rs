//! Unit tests of the `tls:` section ([`crate::tls`]): shape, and each refusal of its PEM files
//! with the field it names. Certificates are made at test time (`tests/common/certs.rs`).

use super::*;
use crate::tls::MAX_PEM_BYTES;

#[path = "../tests/common/certs.rs"]
mod certs;

use certs::{Ca, TempDir};

/// A directory holding a CA, a server certificate and key it signed, and the CA's PEM.
struct Files {
    dir: TempDir,
    cert: String,
    key: String,
    ca: String,
}

fn files() -> Files {
    let dir = TempDir::new("config-tls");
    let ca = Ca::new("test ca");
    let server = ca.server();
    let cert = dir.write("tls.crt", &server.cert_pem).display().to_string();
    let key = dir.write("tls.key", &server.key_pem).display().to_string();
    let ca = dir.write("ca.crt", &ca.cert_pem).display().to_string();
    Files { dir, cert, key, ca }
}

fn tls_yaml(cert: &str, key: &str, client_ca: &str) -> String {
    format!("tls:\n  cert: {cert:?}\n  key: {key:?}\n  client_ca: {client_ca:?}\n")
}

/// Every error of `yaml` as `path: reason`.
fn errors(yaml: &str) -> Vec<String> {
    match ServeConfig::from_yaml(yaml) {
        Ok(c) => panic!("expected an error for {yaml:?}, got {c:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The single error of `yaml`, as `path: reason`.
fn error(yaml: &str) -> String {
    let e = errors(yaml);
    assert_eq!(e.len(), 1, "{yaml:?} gave {e:?}");
    e[0].clone()
}

#[test]
fn no_tls_section_means_a_plaintext_listener() {
    assert_eq!(ServeConfig::embedded_default().tls, None);
    assert_eq!(ServeConfig::from_yaml("tls:\n").unwrap().tls, None);
}

#[test]
fn readable_cert_and_key_give_tls_and_an_empty_client_ca_means_no_mtls() {
    let f = files();
    let c = ServeConfig::from_yaml(&tls_yaml(&f.cert, &f.key, "")).unwrap();
    let tls = c.tls.as_ref().expect("tls set");
    assert_eq!(tls.cert, std::path::PathBuf::from(&f.cert));
    assert_eq!(tls.client_ca, None);
    assert!(!tls.mtls());
    assert!(c.summary().starts_with("listen 127.0.0.1:9002 (TLS), "), "{}", c.summary());

    let without = format!("tls:\n  cert: {:?}\n  key: {:?}\n", f.cert, f.key);
    assert_eq!(ServeConfig::from_yaml(&without).unwrap().tls, c.tls);
}

#[test]
fn a_client_ca_turns_on_mtls() {
    let f = files();
    let c = ServeConfig::from_yaml(&tls_yaml(&f.cert, &f.key, &f.ca)).unwrap();
    assert!(c.tls.as_ref().unwrap().mtls());
    assert!(c.summary().starts_with("listen 127.0.0.1:9002 (mTLS), "), "{}", c.summary());
    let loaded = c.tls.as_ref().unwrap().load().unwrap();
    assert!(loaded.mtls());
    assert!(!format!("{loaded:?}").contains("PRIVATE"), "the key is never printed");
}

#[test]
fn a_missing_cert_file_is_reported_at_tls_cert() {
    let f = files();
    let missing = f.dir.path().join("nope.crt").display().to_string();
    let e = error(&tls_yaml(&missing, &f.key, ""));
    assert!(e.starts_with(&format!("tls.cert: cannot read {missing}: ")), "{e}");
}

#[test]
fn a_garbage_key_is_not_a_pem_private_key() {
    let f = files();
    let garbage = f.dir.write("garbage.key", "this is not PEM\n").display().to_string();
    let e = error(&tls_yaml(&f.cert, &garbage, ""));
    assert_eq!(e, format!("tls.key: {garbage}: not a PEM private key (no PRIVATE KEY block)"));
    // A certificate where the key should be is no key either.
    let e = error(&tls_yaml(&f.cert, &f.cert, ""));
    assert!(e.starts_with("tls.key: ") && e.contains("not a PEM private key"), "{e}");
}

#[test]
fn a_garbage_or_empty_cert_is_not_a_pem_certificate_file() {
    let f = files();
    let empty = f.dir.write("empty.crt", "").display().to_string();
    let e = error(&tls_yaml(&empty, &f.key, ""));
    assert_eq!(e, format!("tls.cert: {empty}: not a PEM certificate file (no CERTIFICATE block)"));
    let broken = f.dir.write("broken.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n").display().to_string();
    let e = error(&tls_yaml(&broken, &f.key, ""));
    assert!(e.starts_with(&format!("tls.cert: {broken}: not a PEM certificate file: ")), "{e}");
}

#[test]
fn a_key_of_another_certificate_is_refused_at_tls_key() {
    let f = files();
    let other = f.dir.write("other.key", Ca::new("other").server().key_pem).display().to_string();
    let e = error(&tls_yaml(&f.cert, &other, ""));
    assert_eq!(e, format!("tls.key: {other} is not the key of the first certificate in {}", f.cert));
}

#[test]
fn a_missing_or_garbage_client_ca_is_reported_at_tls_client_ca() {
    let f = files();
    let missing = f.dir.path().join("nope-ca.crt").display().to_string();
    let e = error(&tls_yaml(&f.cert, &f.key, &missing));
    assert!(e.starts_with(&format!("tls.client_ca: cannot read {missing}: ")), "{e}");
    let e = error(&tls_yaml(&f.cert, &f.key, &f.key));
    assert_eq!(e, format!("tls.client_ca: {}: not a PEM certificate file (no CERTIFICATE block)", f.key));
}

#[test]
fn every_bad_file_is_reported_in_field_order() {
    let f = files();
    let missing = f.dir.path().join("nope").display().to_string();
    let garbage = f.dir.write("garbage", "garbage").display().to_string();
    let e = errors(&tls_yaml(&missing, &garbage, &missing));
    let paths: Vec<&str> = e.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(paths, ["tls.cert", "tls.key", "tls.client_ca"], "{e:?}");
}

#[test]
fn a_directory_an_empty_path_or_an_oversized_file_is_refused() {
    let f = files();
    let dir = f.dir.path().display().to_string();
    assert_eq!(error(&tls_yaml(&dir, &f.key, "")), format!("tls.cert: {dir} is not a regular file"));
    assert_eq!(error(&tls_yaml("", &f.key, "")), "tls.cert: empty path");
    let huge = f.dir.write("huge.key", vec![b'#'; MAX_PEM_BYTES as usize + 1]).display().to_string();
    assert_eq!(error(&tls_yaml(&f.cert, &huge, "")), format!("tls.key: {huge} is larger than 1048576 bytes"));
}

#[test]
fn the_tls_section_refuses_unknown_keys_and_needs_cert_and_key() {
    let e = error("tls:\n  cert: a\n  key: b\n  ciphers: all\n");
    assert!(e.starts_with("tls.ciphers: unknown key"), "{e}");
    let e = error("tls:\n  cert: a\n");
    assert!(e.starts_with("tls: ") && e.contains("`key`"), "{e}");
}
