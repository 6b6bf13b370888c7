//! The configuration file's scalar values: durations, sizes, listen addresses and metrics URLs,
//! how they are read (strings with a unit; bare numbers refused where they would be ambiguous)
//! and rendered. Shared by the config file (`config.rs`) and the discovery sources
//! (`discovery*.rs`), which both import it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Render a duration the way the file spells one.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Render a size the way the file spells one (`1GiB`, `64KiB`, or bytes).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

// ---------------------------------------------------------------------------------------------
// Scalar types: durations, sizes, listen addresses.

/// A duration written as a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Dur(pub(crate) Duration);

/// Parse `50us` (or `50µs`), `250ms`, `30s`, `1.5s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = t.split_at(split);
    let unit_s = match unit.trim_start() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let secs = value * unit_s;
    // Bounded well above any limit the engine accepts, so the conversion cannot panic.
    if !secs.is_finite() || secs > 1e12 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"30s\", \"5m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    E::custom(format!(
                        "{v:?} is not a duration (write a number and a unit: 250ms, 30s, 5m, 1h)"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write durations as strings such as \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!("{v} is not a duration (write a string such as \"30s\")")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!("{v} has no unit: write durations as strings such as \"{v}s\"")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size: an integer, or a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Size(pub(crate) u64);

/// Parse `1048576`, `64KiB`, `512MiB`, `1GiB`, `1TiB`, `10MB`, `100B`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a size: bytes as an integer, or a string such as \"64KiB\", \"512MiB\", \"1GiB\"",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is not a size (sizes cannot be negative)")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "{v} is not a size (write whole bytes, or a unit: 64KiB, 512MiB, 1GiB)"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).ok_or_else(|| {
                    E::custom(format!("{v:?} is not a size (write bytes, or a unit: 64KiB, 512MiB, 1GiB)"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A listen address, `ip:port`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Listen(pub(crate) SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ip:port address such as 127.0.0.1:9002")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                v.trim().parse().map(Listen).map_err(|_| {
                    E::custom(format!(
                        "{v:?} is not an ip:port address (e.g. 127.0.0.1:9002 or \"[::]:9002\")"
                    ))
                })
            }
            // `listen: [::]:9002` unquoted is a YAML list.
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Listen, A::Error> {
                Err(de::Error::custom("is a YAML list: quote IPv6 addresses, e.g. \"[::]:9002\""))
            }
        }
        d.deserialize_any(V)
    }
}

/// `null` (a key with nothing under it) reads as the default.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Most bytes of a backend's `metrics` URL.
pub const MAX_METRICS_URL_BYTES: usize = 2048;

/// A metrics URL flowgate can scrape: `http://host:port/path` (no TLS, no credentials).
pub(crate) fn check_metrics_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_METRICS_URL_BYTES {
        return Err(format!("longer than {MAX_METRICS_URL_BYTES} bytes"));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// metrics pages are scraped"));
    }
    match uri.authority() {
        Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => Ok(()),
        _ => Err(format!("{url:?} needs a host[:port] and no credentials")),
    }
}
