//! Sync between a tablet and the provincial server (protocol v1 over HTTPS).
//!
//! Contract: [`SyncClient::sync`] brings a [`DeviceStore`](crate::store::DeviceStore) and the
//! server up to date with each other in rounds of size-bounded, idempotent batches, so that a
//! sync interrupted at any instant resumes where it stopped, loses nothing and applies nothing
//! twice; [`enroll`] turns a one-time code into a device credential; [`BackgroundPolicy`] says
//! when the platform should sync next. The HTTP exchange sits behind [`Transport`] (reqwest with
//! rustls in production, feature `http`); nothing here starts a runtime, and the only runtime
//! service used is tokio's timer, for the waits between retries.
//!
//! - [`transport`]: one HTTP exchange, as data in and data out;
//! - [`client`]: rounds, retries with backoff, errors, progress and the report;
//! - [`policy`]: the background schedule, a pure function;
//! - [`attachments`]: the attachment channel, after the records (resumable chunks).
//! - [`tls`] (feature `http`): which servers are trusted over HTTPS.

pub mod attachments;
pub mod client;
pub mod policy;
#[cfg(feature = "http")]
pub mod tls;
pub mod transport;

pub use client::{
    Credentials, ENROLL_PATH, KeyRefresh, SYNC_PATH, Scope, SyncClient, SyncConfig, SyncError,
    SyncPhase, SyncProgress, SyncReport, enroll, enroll_with_key,
};
pub use policy::{BackgroundPolicy, PolicyError, PolicyInput, SyncDecision};
#[cfg(feature = "http")]
pub use tls::{ServerTrust, TrustConfigError};
pub use transport::{HttpRequest, HttpResponse, Transport, TransportError};
#[cfg(feature = "http")]
pub use transport::{ReqwestConfig, ReqwestTransport};
