//! herd: a herd of location servers, each one process running one hand-written `mio` readiness loop.
//!
//! The pure parts (protocol, records, JSON shaping, HTTP framing) have no I/O and no clock, so they can be
//! unit-tested, property-tested and measured with criterion. Everything that waits for the kernel lives
//! under [`server`], in one loop per process.

pub mod certs;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gjson;
pub mod http;
pub mod load;
pub mod places;
pub mod places_service;
pub mod protocol;
pub mod record;
pub mod route;
pub mod server;
#[doc(hidden)]
pub mod sim;
pub mod up;
