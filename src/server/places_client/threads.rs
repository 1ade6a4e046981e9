//! Building a [`PlacesClient`] from the config (TLS roots, endpoint, key) and the two helper threads it
//! starts: `herd-shaper`, which turns response bodies into answers, and `herd-resolver`, which resolves
//! the host name (DNS blocks). Both hand their results back through channels and wake the loop.

use super::{Address, PlacesClient, PlacesCounters, Queue};
use crate::config::{PlacesApi, PlacesConfig};
use crate::places::{Api, Endpoint, Failure, PlacesAnswer};
use crate::server::error::ServerError;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Why `PlacesClient::build` failed, before it becomes a `ServerError`.
enum Setup {
    Message(String),
    Thread(&'static str, std::io::Error),
}

impl From<String> for Setup {
    fn from(message: String) -> Setup {
        Setup::Message(message)
    }
}

/// A response body for the shaper thread, with what it needs to read it.
pub(super) struct ShapeJob {
    pub(super) id: u64,
    pub(super) api: Api,
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl PlacesClient {
    /// Builds the client from the config: TLS roots (webpki plus `ca_file`), the endpoint, the key from
    /// the environment. `waker` wakes the loop when a name is resolved or an answer is shaped.
    pub fn new(config: &PlacesConfig, waker: Arc<mio::Waker>) -> Result<PlacesClient, ServerError> {
        Self::build(config, waker).map_err(|e| match e {
            Setup::Message(m) => ServerError::Places(m),
            Setup::Thread(what, source) => ServerError::Thread { what, source },
        })
    }

    fn build(config: &PlacesConfig, waker: Arc<mio::Waker>) -> Result<PlacesClient, Setup> {
        let api = match config.api {
            PlacesApi::Legacy => Api::Legacy,
            PlacesApi::New => Api::New,
        };
        let endpoint = Endpoint::parse(api, &config.url).map_err(|e| format!("places.url: {e}"))?;
        let key = match &config.key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    log::warn!("places.key_env names {var}, which is not set: Places requests go without a key");
                    None
                }
            },
            None => None,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.ca_file {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("places.ca_file {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| format!("places.ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("places.ca_file {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("places.ca_file {}: no certificate in it", path.display()).into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("places.url: host {:?}: {e}", endpoint.host))?;

        // The shaper: `PlacesAnswer::from_response` parses the body with serde_json (order kept, numbers
        // as text) and writes it out again in Google's style, 375-640 µs for a 20-result body
        // (`places/from_response_legacy_20`), during which the loop would answer no one. Here it costs
        // the loop two channel operations and one wake-up per response; the body moves over, not copied,
        // and is freed here too. One thread shapes responses one after the other, which is enough:
        // each is a fraction of a millisecond, and a request waiting behind another is still bounded by
        // its deadline. Sending the answer back needs `PlacesAnswer: Send`, which the compiler checks.
        // The thread ends when the client is dropped (its channel closes).
        let (shaper, jobs) = mpsc::channel::<ShapeJob>();
        let (shaped_tx, shaped) = mpsc::channel::<(u64, PlacesAnswer)>();
        let shaper_waker = waker.clone();
        std::thread::Builder::new()
            .name("herd-shaper".into())
            .spawn(move || {
                for job in jobs {
                    let answer = PlacesAnswer::from_response(job.api, job.status, &job.body);
                    drop(job.body);
                    // Send first, then wake: the loop drains the channel on every wake-up, so an answer
                    // sent before a wake is never left behind.
                    if shaped_tx.send((job.id, answer)).is_err() {
                        break;
                    }
                    let _ = shaper_waker.wake();
                }
            })
            .map_err(|e| Setup::Thread("shaper", e))?;

        let mut client = PlacesClient {
            api,
            key,
            tls: Arc::new(tls),
            server_name,
            timeout: Duration::from_millis(config.timeout_ms),
            ttl: Duration::from_secs(config.cache_ttl_s),
            cache_max_bytes: config.cache_max_bytes,
            pool_size: config.pool_size,
            max_conns: config.pool_size.max(1) * 4,
            address: Address::Resolving,
            resolver: None,
            resolved: None,
            addresses: Vec::new(),
            resolving: false,
            shaper,
            shaped,
            cache: HashMap::new(),
            cache_bytes: 0,
            requests: HashMap::new(),
            by_key: HashMap::new(),
            queue: Queue::default(),
            idle: Vec::new(),
            conns: 0,
            next_id: 0,
            pending_bytes: 0,
            refusal_client: Failure::ClientPending.answer().body(0).to_vec(),
            refusal_bytes: Failure::ServerPending.answer().body(0).to_vec(),
            counters: PlacesCounters::default(),
            endpoint,
        };
        match client.endpoint.host.parse::<IpAddr>() {
            Ok(ip) => client.address = Address::Ready(SocketAddr::new(ip, client.endpoint.port)),
            Err(_) => {
                let (tx, rx) = mpsc::channel::<(String, u16)>();
                let (res_tx, res_rx) = mpsc::channel();
                std::thread::Builder::new()
                    .name("herd-resolver".into())
                    .spawn(move || {
                        for (host, port) in rx {
                            let result = (host.as_str(), port)
                                .to_socket_addrs()
                                .map_err(|e| format!("cannot resolve {host}: {e}"))
                                .map(|a| a.collect::<Vec<_>>())
                                .and_then(|a| if a.is_empty() { Err(format!("{host} has no address")) } else { Ok(a) });
                            if res_tx.send(result).is_err() {
                                break;
                            }
                            let _ = waker.wake();
                        }
                    })
                    .map_err(|e| Setup::Thread("resolver", e))?;
                client.resolver = Some(tx);
                client.resolved = Some(res_rx);
                client.resolve();
            }
        }
        Ok(client)
    }

    /// Asks the resolver thread for the host's address (again).
    pub fn resolve(&mut self) {
        if self.resolving {
            return;
        }
        if let Some(tx) = &self.resolver {
            self.resolving = true;
            let _ = tx.send((self.endpoint.host.clone(), self.endpoint.port));
        }
    }

    /// Takes the resolver's answers (after the waker woke the loop).
    pub fn take_resolved(&mut self) -> bool {
        let mut any = false;
        while let Some(result) = self.resolved.as_ref().and_then(|rx| rx.try_recv().ok()) {
            any = true;
            self.resolving = false;
            self.address = match result {
                Ok(addrs) => {
                    // Stay on the address in use if the name still has it.
                    let keep = match &self.address {
                        Address::Ready(a) if addrs.contains(a) => *a,
                        _ => addrs[0],
                    };
                    self.addresses = addrs;
                    Address::Ready(keep)
                }
                Err(e) => {
                    self.counters.errors_resolve += 1;
                    // Keep a previous good address if there is one.
                    match &self.address {
                        Address::Ready(a) => Address::Ready(*a),
                        _ => Address::Failed(e),
                    }
                }
            };
        }
        any
    }
}
