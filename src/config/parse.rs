//! From a JSON value to a [`Config`]: the top level (servers and links), each section's parser (places,
//! limits, records, journal, peer_tls, log options) and the checks across sections (ports, names).

use super::error::{bad, expected, FieldError, Problem};
use super::read::{describe, Obj};
use super::{
    is_dns_label, Config, JournalConfig, Limits, LocalPlacesConfig, LogDetail, LogOptions, PeerTlsConfig, PlacesApi,
    PlacesConfig, ServerConfig,
};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub(super) fn from_value(value: &Value) -> Result<Config, FieldError> {
    let top = Obj::new(value, "")?;
    top.only(&[
        "servers",
        "links",
        "places",
        "local_places",
        "log_dir",
        "log_max_bytes",
        "log_keep",
        "log_detail",
        "herd_secret_env",
        "admin_host",
        "admin_token_env",
        "run_dir",
        "limits",
        "peer_tls",
        "journal",
        "records",
    ])?;

    let servers_value = top.require("servers")?;
    let Value::Array(items) = servers_value else {
        return Err(expected("servers", "an array", describe(servers_value)));
    };
    if items.is_empty() {
        return Err(bad("servers", Problem::NoServers));
    }
    let mut servers = Vec::with_capacity(items.len());
    let mut names = HashMap::new();
    let mut ports: HashMap<(String, u16), String> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("servers[{i}]");
        let o = Obj::new(item, &at)?;
        o.only(&["name", "host", "port", "peer_port", "admin_port"])?;
        let name = o.required_string("name")?;
        if name.bytes().any(|b| crate::protocol::is_whitespace(b) || b.is_ascii_control()) || name.len() > 64 {
            return Err(bad(format!("{at}.name"), Problem::BadName { name }));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(bad(format!("{at}.name"), Problem::DuplicateName { name }));
        }
        let host = o.string("host")?.unwrap_or_else(|| "127.0.0.1".into());
        let port = o.required_integer("port", 1, 65535)? as u16;
        let peer_port = o.required_integer("peer_port", 1, 65535)? as u16;
        let admin_port = o.integer("admin_port", 1, 65535)?.map(|p| p as u16);
        for (what, p) in
            [("port", port), ("peer_port", peer_port)].into_iter().chain(admin_port.map(|p| ("admin_port", p)))
        {
            if let Some(other) = ports.insert((host.clone(), p), format!("{name}.{what}")) {
                return Err(bad(format!("{at}.{what}"), Problem::PortTaken { port: p, host, by: other }));
            }
        }
        servers.push(ServerConfig { name, host, port, peer_port, admin_port });
    }

    let mut links = Vec::new();
    if let Some(v) = top.get("links") {
        let Value::Array(items) = v else {
            return Err(expected("links", "an array of [name, name] pairs", describe(v)));
        };
        for (i, item) in items.iter().enumerate() {
            let pair = match item {
                Value::Array(p) if p.len() == 2 => (p[0].as_str(), p[1].as_str()),
                other => return Err(expected(format!("links[{i}]"), "a pair [name, name]", describe(other))),
            };
            let (Some(a), Some(b)) = pair else {
                return Err(expected(format!("links[{i}]"), "two server names", describe(item)));
            };
            let index = |n: &str| {
                names
                    .get(n)
                    .copied()
                    .ok_or_else(|| bad(format!("links[{i}]"), Problem::UnknownServer { name: n.into() }))
            };
            let (a, b) = (index(a)?, index(b)?);
            if a == b {
                return Err(bad(format!("links[{i}]"), Problem::SelfLink));
            }
            let link = (a.min(b), a.max(b));
            if links.contains(&link) {
                return Err(bad(format!("links[{i}]"), Problem::DuplicateLink));
            }
            links.push(link);
        }
    }

    let peer_tls = top.get("peer_tls").map(parse_peer_tls).transpose()?;
    if peer_tls.is_some() {
        check_certificate_names(&servers)?;
    }

    let places = top.get("places").map(parse_places).transpose()?;
    let local_places = match top.get("local_places") {
        None => None,
        Some(v) => {
            let o = Obj::new(v, "local_places")?;
            o.only(&["listen", "ca_out"])?;
            let listen = o.required_string("listen")?;
            let listen = listen
                .parse::<SocketAddr>()
                .map_err(|_| expected("local_places.listen", "IP:PORT", format!("{listen:?}")))?;
            Some(LocalPlacesConfig { listen, ca_out: o.required_string("ca_out")?.into() })
        }
    };

    let limits = match top.get("limits") {
        None => Limits::default(),
        Some(v) => parse_limits(v)?,
    };

    Ok(Config {
        path: PathBuf::new(),
        servers,
        links,
        places,
        local_places,
        log_dir: top.string("log_dir")?.unwrap_or_else(|| "logs".into()).into(),
        herd_secret_env: top.string("herd_secret_env")?,
        admin_host: match top.string("admin_host")? {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().map_err(|_| expected("admin_host", "an IP address", format!("{h:?}")))?,
        },
        admin_token_env: top.string("admin_token_env")?,
        run_dir: top.string("run_dir")?.unwrap_or_else(|| "run".into()).into(),
        limits,
        log: parse_log_options(&top)?,
        peer_tls,
        journal: top.get("journal").map(parse_journal).transpose()?,
        records: match top.get("records") {
            None => crate::record::Retention::default(),
            Some(v) => parse_records(v)?,
        },
        share_client_port: false,
    })
}

/// `"records": {"max": N, "max_age_s": S}`, both optional. A slot is a `u32`, so N stays below 2^32;
/// S up to 100 years.
fn parse_records(v: &Value) -> Result<crate::record::Retention, FieldError> {
    let o = Obj::new(v, "records")?;
    o.only(&["max", "max_age_s"])?;
    Ok(crate::record::Retention {
        max: o.integer("max", 1, u64::from(u32::MAX - 1))?.map(|n| n as usize),
        max_age_s: o.integer("max_age_s", 1, 100 * 365 * 86_400)?,
    })
}

fn parse_journal(v: &Value) -> Result<JournalConfig, FieldError> {
    let o = Obj::new(v, "journal")?;
    o.only(&["dir", "fsync", "rewrite_ratio", "rewrite_min_bytes"])?;
    let fsync = o.string("fsync")?.unwrap_or_else(|| "everysec".into());
    if !["always", "everysec", "no"].contains(&fsync.as_str()) {
        return Err(expected("journal.fsync", "\"always\", \"everysec\" or \"no\"", format!("{fsync:?}")));
    }
    let rewrite_ratio = match o.get("rewrite_ratio") {
        None => 2.0,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|r| (1.1..=1000.0).contains(&r)) => {
            n.as_f64().expect("checked")
        }
        Some(other) => return Err(expected("journal.rewrite_ratio", "a number from 1.1 to 1000", describe(other))),
    };
    let rewrite_min_bytes = match o.get("rewrite_min_bytes") {
        None => super::JOURNAL_REWRITE_MIN_BYTES,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().expect("checked"),
        Some(other) => return Err(expected("journal.rewrite_min_bytes", "a whole number of bytes", describe(other))),
    };
    let dir = o.required_string("dir")?.into();
    Ok(JournalConfig { dir, fsync, rewrite_ratio, rewrite_min_bytes, truncate_corrupt: false })
}

fn parse_peer_tls(v: &Value) -> Result<PeerTlsConfig, FieldError> {
    let o = Obj::new(v, "peer_tls")?;
    o.only(&["ca_file", "cert_dir"])?;
    Ok(PeerTlsConfig { ca_file: o.required_string("ca_file")?.into(), cert_dir: o.required_string("cert_dir")?.into() })
}

/// With `peer_tls`, a certificate names each server: every name must be a DNS label, and no two may differ
/// only in case (certificate names compare case-insensitively, so one certificate would name both).
fn check_certificate_names(servers: &[ServerConfig]) -> Result<(), FieldError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (i, s) in servers.iter().enumerate() {
        if !is_dns_label(&s.name) {
            return Err(bad(format!("servers[{i}].name"), Problem::NotDnsLabel { name: s.name.clone() }));
        }
        if let Some(other) = seen.insert(s.name.to_ascii_lowercase(), &s.name) {
            let problem = Problem::CaseCollision { name: s.name.clone(), other: other.to_string() };
            return Err(bad(format!("servers[{i}].name"), problem));
        }
    }
    Ok(())
}

fn parse_log_options(top: &Obj<'_>) -> Result<LogOptions, FieldError> {
    let d = LogOptions::default();
    Ok(LogOptions {
        max_bytes: top.integer("log_max_bytes", 4096, 1 << 40)?.unwrap_or(d.max_bytes),
        keep: top.integer("log_keep", 0, 1000)?.map_or(d.keep, |k| k as u32),
        detail: match top.string("log_detail")?.as_deref() {
            None | Some("io") => LogDetail::Io,
            Some("records") => LogDetail::Records,
            Some("events") => LogDetail::Events,
            Some(other) => {
                return Err(expected("log_detail", "\"io\", \"records\" or \"events\"", format!("{other:?}")))
            }
        },
    })
}

fn parse_places(v: &Value) -> Result<PlacesConfig, FieldError> {
    let o = Obj::new(v, "places")?;
    o.only(&["api", "url", "key_env", "ca_file", "timeout_ms", "pool_size", "cache_ttl_s", "cache_max_bytes"])?;
    let api = match o.string("api")?.as_deref() {
        None | Some("legacy") => PlacesApi::Legacy,
        Some("new") => PlacesApi::New,
        Some(other) => return Err(expected("places.api", "\"legacy\" or \"new\"", format!("{other:?}"))),
    };
    let url = o.required_string("url")?;
    if !url.starts_with("https://") {
        return Err(expected("places.url", "an https:// URL", format!("{url:?}")));
    }
    Ok(PlacesConfig {
        api,
        url,
        key_env: o.string("key_env")?,
        ca_file: o.string("ca_file")?.map(PathBuf::from),
        timeout_ms: o.integer("timeout_ms", 1, 600_000)?.unwrap_or(3000),
        pool_size: o.integer("pool_size", 0, 64)?.unwrap_or(4) as usize,
        cache_ttl_s: o.integer("cache_ttl_s", 0, 86_400)?.unwrap_or(300),
        cache_max_bytes: o.integer("cache_max_bytes", 0, 1 << 40)?.unwrap_or(64 << 20) as usize,
    })
}

fn parse_limits(v: &Value) -> Result<Limits, FieldError> {
    let o = Obj::new(v, "limits")?;
    let names = [
        "max_line",
        "max_clients",
        "client_output_soft",
        "client_output_hard",
        "peer_output_max",
        "idle_timeout_ms",
        "unknown_client_grace_ms",
        "line_timeout_ms",
        "max_clock_skew_s",
        "max_pending_places_per_client",
        "max_clients_per_ip",
        "per_ip_exempt_loopback",
        "peer_dead_after_ms",
    ];
    o.only(&names)?;
    let d = Limits::default();
    let get = |k: &str, dflt: usize, min: u64, max: u64| -> Result<usize, FieldError> {
        Ok(o.integer(k, min, max)?.map_or(dflt, |n| n as usize))
    };
    let limits = Limits {
        max_line: get("max_line", d.max_line, 16, 1 << 24)?,
        max_clients: get("max_clients", d.max_clients, 1, 1 << 20)?,
        client_output_soft: get("client_output_soft", d.client_output_soft, 1024, 1 << 30)?,
        client_output_hard: get("client_output_hard", d.client_output_hard, 1024, 1 << 31)?,
        peer_output_max: get("peer_output_max", d.peer_output_max, 64 * 1024, 1 << 31)?,
        idle_timeout_ms: get("idle_timeout_ms", d.idle_timeout_ms as usize, 1, 1 << 40)? as u64,
        unknown_client_grace_ms: get("unknown_client_grace_ms", d.unknown_client_grace_ms as usize, 0, 60_000)? as u64,
        line_timeout_ms: get("line_timeout_ms", d.line_timeout_ms as usize, 1, 1 << 40)? as u64,
        // At most a year: the time difference of an AT line stays within its 21-byte bound.
        max_clock_skew_s: get("max_clock_skew_s", d.max_clock_skew_s as usize, 0, 366 * 86_400)? as u64,
        // At least 1 (0 would refuse every WHATSAT that misses the cache), at most the 64 replies a
        // connection may have waiting at all (client.rs MAX_WAITING).
        max_pending_places_per_client: get("max_pending_places_per_client", d.max_pending_places_per_client, 1, 64)?,
        max_clients_per_ip: get("max_clients_per_ip", d.max_clients_per_ip, 1, 1 << 20)?,
        per_ip_exempt_loopback: o.boolean("per_ip_exempt_loopback")?.unwrap_or(d.per_ip_exempt_loopback),
        // At least 300 ms: a ping every 100 ms is already far more than a link needs; at most 10 minutes.
        peer_dead_after_ms: get("peer_dead_after_ms", d.peer_dead_after_ms as usize, 300, 600_000)? as u64,
    };
    if limits.client_output_hard < limits.client_output_soft {
        return Err(bad("limits.client_output_hard", Problem::HardBelowSoft));
    }
    Ok(limits)
}
