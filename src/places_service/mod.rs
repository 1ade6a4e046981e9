//! (in progress) The local Places-compatible HTTPS service.

pub mod api;
pub mod certs;
pub mod gazetteer;
pub mod http1;
