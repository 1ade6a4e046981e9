//! The admin listener: Prometheus metrics and the record table, served by the same loop.

mod common;

use common::*;

#[test]
fn metrics_and_records_reflect_what_the_server_did() {
    let herd = Herd::start(HerdConfig::new(&["A", "B"], &[("A", "B")], ""));
    let a = herd.config.member("A").clone();
    let b = herd.config.member("B").clone();
    ask(a.port, b"IAMAT kiwi +34.068930-118.445127 1700000000.5\nbogus\n\nWHATSAT kiwi 10 1\n");
    let line = whatsat_first_line(b.port, "kiwi");
    assert!(line.starts_with("AT A "), "{line}");

    let (status, metrics) = admin_get(a.admin_port, "/metrics");
    assert_eq!(status, 200);
    for want in [
        "# TYPE herd_commands_total counter",
        r#"herd_commands_total{server="A",kind="iamat"} 1"#,
        r#"herd_commands_total{server="A",kind="whatsat"} 1"#,
        r#"herd_commands_total{server="A",kind="blank"} 1"#,
        r#"herd_invalid_total{server="A"} 1"#,
        r#"herd_records{server="A"} 1"#,
        r#"herd_link_up{server="A",neighbour="B"} 1"#,
        r#"herd_client_closes_total{server="A",reason="eof"}"#,
    ] {
        assert!(metrics.contains(want), "metrics lack {want:?}:\n{metrics}");
    }
    // Every sample line is `name{labels} value`.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').unwrap();
        assert!(name.starts_with("herd_") && name.ends_with('}'), "{l}");
        value.parse::<u64>().unwrap_or_else(|_| panic!("{l}"));
    }
    let (_, metrics_b) = admin_get(b.admin_port, "/metrics");
    assert!(metrics_b.contains(r#"herd_records_received_total{server="B"} 1"#), "{metrics_b}");

    let (status, records) = admin_get(b.admin_port, "/records");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&records).unwrap();
    assert_eq!(v, serde_json::json!([{"client_id": "kiwi", "at": line}]));

    assert_eq!(admin_get(a.admin_port, "/nothing").0, 404);
    // The admin port is not a client port: commands there get an HTTP error, not a reply.
    assert!(ask(a.admin_port, b"IAMAT x +1+1 1\r\n\r\n").starts_with(b"HTTP/1.1 400"));
}
