//! The Envoy config: the e2e test's own template (`e2e/envoy.yaml.tmpl`, embedded at build time so
//! the bench measures exactly the filter setup the e2e checks: ext_proc with
//! `allow_mode_override: true` and the response body `STREAMED`), rendered the way
//! `e2e/run_e2e.py` renders it: sections start with a `#@@ NAME` line, `${VAR}` placeholders are
//! substituted.

use std::collections::HashMap;
use std::io;

/// The e2e template, as the e2e test uses it.
pub const E2E_TEMPLATE: &str = include_str!("../../../e2e/envoy.yaml.tmpl");
/// The marker opening a section.
const SECTION: &str = "#@@ ";

/// Where the one listener's traffic goes.
#[derive(Clone, Debug)]
pub struct Ports {
    /// Envoy's admin port.
    pub admin: u16,
    /// The listener clients send to.
    pub listen: u16,
    /// flowgate's ext_proc (gRPC) port.
    pub grpc: u16,
}

/// Split the template into its named sections.
fn sections(template: &str) -> HashMap<&str, String> {
    let mut out: HashMap<&str, String> = HashMap::new();
    let mut current = None;
    for line in template.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix(SECTION) {
            let name = name.trim();
            out.insert(name, String::new());
            current = Some(name);
        } else if let Some(text) = current.and_then(|c| out.get_mut(c)) {
            text.push_str(line);
        }
    }
    out
}

/// Substitute `${KEY}` for each pair; an unrendered placeholder left over is an error.
fn substitute(text: &str, pairs: &[(&str, &str)]) -> io::Result<String> {
    let mut text = text.to_string();
    for (k, v) in pairs {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    match text.find("${") {
        Some(at) => Err(io::Error::other(format!(
            "envoy template: unrendered placeholder near {:?}",
            &text[at..(at + 40).min(text.len())]
        ))),
        None => Ok(text),
    }
}

/// Render `template` with one listener `name` in front of flowgate, logging access to
/// `access_log`.
pub fn render(template: &str, name: &str, ports: &Ports, access_log: &str) -> io::Result<String> {
    let s = sections(template);
    let section = |n: &str| {
        s.get(n).ok_or_else(|| io::Error::other(format!("envoy template: no `{SECTION}{n}` section")))
    };
    let cluster = format!("flowgate_ext_proc_{name}");
    let filter = substitute(section("ext_proc_filter")?, &[("CLUSTER", &cluster)])?;
    let listener = substitute(
        section("listener")?,
        &[
            ("NAME", name),
            ("PORT", &ports.listen.to_string()),
            ("ACCESS_LOG", access_log),
            ("EXT_PROC_FILTER", &filter),
        ],
    )?;
    let clusters = substitute(
        section("ext_proc_cluster")?,
        &[("CLUSTER", &cluster), ("GRPC_PORT", &ports.grpc.to_string())],
    )?;
    substitute(
        section("main")?,
        &[
            ("ADMIN_PORT", &ports.admin.to_string()),
            ("LISTENERS", &listener),
            ("EXT_PROC_CLUSTERS", &clusters),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_e2e_template_renders_with_the_override_allowed() {
        let ports = Ports { admin: 9901, listen: 10000, grpc: 50051 };
        let yaml = render(E2E_TEMPLATE, "bench", &ports, "/dev/null").expect("renders");
        assert!(!yaml.contains("${"), "{yaml}");
        assert!(yaml.contains("port_value: 9901") && yaml.contains("port_value: 10000"));
        assert!(yaml.contains("port_value: 50051") && yaml.contains("cluster_name: flowgate_ext_proc_bench"));
        assert!(yaml.contains("allow_mode_override: true") && yaml.contains("response_body_mode: STREAMED"));
        assert!(yaml.contains("stat_prefix: ingress_bench"));
    }

    #[test]
    fn a_broken_template_is_an_error() {
        let ports = Ports { admin: 1, listen: 2, grpc: 3 };
        assert!(render("#@@ main\n${ADMIN_PORT}\n", "x", &ports, "/dev/null").is_err());
        let t = "#@@ main\n${LISTENERS}${EXT_PROC_CLUSTERS}${MISSING}\n#@@ listener\n${EXT_PROC_FILTER}\n#@@ ext_proc_filter\n#@@ ext_proc_cluster\n";
        assert!(render(t, "x", &ports, "/dev/null").is_err());
    }
}
