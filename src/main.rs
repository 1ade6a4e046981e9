//! The `herd` command line (PROTOCOL section 8): `up`, `serve`, `places`, `load`, `certs`.
//!
//! Every layer returns its own error type ([`ConfigError`], [`UpError`], the server's error, and the
//! `places` and `load` commands' own); this file only turns them into one line on stderr and an exit
//! status: 2 for a bad command line and for anything that stops a start (as PROTOCOL section 8 says),
//! and whatever [`UpError::exit_status`] says for `herd up`.

use herd::config::{Config, ConfigError, DEFAULT_PATH};
use herd::up::UpError;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  herd up [--config FILE]                      run every server of the config (and the local Places service)
  herd serve NAME [--config FILE] [--journal-truncate-corrupt]
                                               run one server in the foreground; the flag keeps what
                                               precedes a corrupt journal entry instead of refusing to start
  herd places --listen ADDR --ca-out FILE      run the local Places-compatible HTTPS service
  herd load [OPTIONS]                          the load generator (herd load --help)
  herd certs [--config FILE] --out DIR         the herd CA and each server's certificate for peer_tls
             [--renew] [--force] [--days N]    (keeps existing files; herd certs --help)

--config defaults to config/herd.json. Logging to stderr follows RUST_LOG (default: info).";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("up") => up(&args[1..]),
        Some("places") => herd::places_service::cli(&args[1..]),
        Some("load") => herd::load::cli(&args[1..]),
        Some("certs") => herd::certs::cli(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some("-V" | "--version") => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(other) => usage_error(&format!("unknown command {other:?}")),
        None => usage_error("missing command"),
    };
    ExitCode::from(code as u8)
}

fn usage_error(msg: &str) -> i32 {
    eprintln!("herd: {msg}\n{USAGE}");
    2
}

/// Splits `[NAME] [--config FILE]` in any order.
fn config_and_names(args: &[String]) -> Result<(PathBuf, Vec<String>), String> {
    let mut config = PathBuf::from(DEFAULT_PATH);
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => config = it.next().ok_or("--config needs a FILE")?.into(),
            s if s.starts_with("--config=") => config = s["--config=".len()..].into(),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s => names.push(s.to_string()),
        }
    }
    Ok((config, names))
}

/// A start-up failure: its one line on stderr, and exit status 2.
fn start_failed(e: &dyn Display) -> i32 {
    eprintln!("herd: {e}");
    2
}

fn load_config(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e: ConfigError| start_failed(&e))
}

fn serve(args: &[String]) -> i32 {
    let truncate_corrupt = args.iter().any(|a| a == "--journal-truncate-corrupt");
    // Hidden, for benches/compare only: SO_REUSEPORT on the client port (`Config::share_client_port`).
    let share_client_port = args.iter().any(|a| a == "--reuseport");
    let args: Vec<String> =
        args.iter().filter(|a| !matches!(a.as_str(), "--journal-truncate-corrupt" | "--reuseport")).cloned().collect();
    let (path, names) = match config_and_names(&args) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let [name] = names.as_slice() else {
        return usage_error("serve takes exactly one server NAME");
    };
    let mut config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(j) = config.journal.as_mut() {
        j.truncate_corrupt = truncate_corrupt;
    }
    config.share_client_port = share_client_port;
    match herd::server::serve(&config, name) {
        Ok(()) => 0,
        Err(e) => start_failed(&e),
    }
}

fn up(args: &[String]) -> i32 {
    let (path, names) = match config_and_names(args) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    if !names.is_empty() {
        return usage_error("up takes no server names");
    }
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match herd::up::run(&config) {
        Ok(()) => 0,
        // Ctrl-C during start-up: the user knows why; nothing to add.
        Err(e @ UpError::Interrupted) => e.exit_status().into(),
        Err(e) => {
            eprintln!("herd: {e}");
            e.exit_status().into()
        }
    }
}
