//! # communesync-server
//!
//! The provincial server: an axum service over one storage trait with two backends (SQLite, the
//! embedded default, and PostgreSQL), plus the operator CLI and the demo.

pub mod attachment_sweep;
pub mod backup;
pub mod calendar_history;
pub mod catalogue;
pub mod console;
pub mod external_ids;
pub mod http;
pub mod link;
pub mod metrics;
pub mod numbers;
pub mod reports;
pub mod serve;
pub mod storage;
pub mod tls;
