//! The error that crosses the FFI: one case per thing an app does about it.

use communesync_core::Error as CoreError;
use communesync_core::sync::SyncError;

/// Why an engine call failed. Each case carries a readable message (in English, for logs and
/// support; apps show their own text per case).
#[derive(Debug, Clone, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum CommuneSyncError {
    /// The server could not be reached or kept failing: keep working offline, sync later.
    #[error("offline: {0}")]
    Offline(String),
    /// The server does not accept the credential or the enrollment code, or the device is not
    /// enrolled: enroll (again) with a new code.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The province revoked this device: stop syncing; an operator must enroll it again.
    #[error("revoked: {0}")]
    Revoked(String),
    /// The province revoked this device and ordered it wiped: the engine has destroyed the
    /// store (observers got `on_wiped`). Delete the key and the credential from the keystore;
    /// every later call of this engine fails with this error.
    #[error("wiped: {0}")]
    Wiped(String),
    /// The server's certificate is not trusted: another CA than the configured ones, expired
    /// (or the tablet's clock is wrong), issued for another host name, or no pinned key; the
    /// message says which. Not `Offline`: retrying on the same network will not help (a captive
    /// Wi-Fi portal, a wrong clock or a wrong `server_url` might be the cause); the background
    /// policy waits an hour, then longer, before trying again.
    #[error("untrusted server: {0}")]
    UntrustedServer(String),
    /// The server no longer accepts this version of the app: nothing syncs until the app is
    /// upgraded (the background policy says `Stop` until then). Local work goes on and is kept.
    #[error("upgrade required: {0}")]
    UpgradeRequired(String),
    /// A value the engine does not accept (a field, an id, a date, a key); the message names it.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No record with this id (of this kind) on the device.
    #[error("not found: {0}")]
    NotFound(String),
    /// The edit does not fit the record's current state (for example a status change that the
    /// workflow no longer allows after a sync): read the record again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The device store failed (disk full, wrong key, corrupt or too new a file).
    #[error("storage: {0}")]
    Storage(String),
}

/// The case of a [`CommuneSyncError`], without its message (for status snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ErrorKind {
    /// See [`CommuneSyncError::Offline`].
    Offline,
    /// See [`CommuneSyncError::Unauthorized`].
    Unauthorized,
    /// See [`CommuneSyncError::Revoked`].
    Revoked,
    /// See [`CommuneSyncError::Wiped`].
    Wiped,
    /// See [`CommuneSyncError::UntrustedServer`].
    UntrustedServer,
    /// See [`CommuneSyncError::UpgradeRequired`].
    UpgradeRequired,
    /// See [`CommuneSyncError::InvalidInput`].
    InvalidInput,
    /// See [`CommuneSyncError::NotFound`].
    NotFound,
    /// See [`CommuneSyncError::Conflict`].
    Conflict,
    /// See [`CommuneSyncError::Storage`].
    Storage,
}

impl CommuneSyncError {
    /// The case, without the message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommuneSyncError::Offline(_) => ErrorKind::Offline,
            CommuneSyncError::Unauthorized(_) => ErrorKind::Unauthorized,
            CommuneSyncError::Revoked(_) => ErrorKind::Revoked,
            CommuneSyncError::Wiped(_) => ErrorKind::Wiped,
            CommuneSyncError::UntrustedServer(_) => ErrorKind::UntrustedServer,
            CommuneSyncError::UpgradeRequired(_) => ErrorKind::UpgradeRequired,
            CommuneSyncError::InvalidInput(_) => ErrorKind::InvalidInput,
            CommuneSyncError::NotFound(_) => ErrorKind::NotFound,
            CommuneSyncError::Conflict(_) => ErrorKind::Conflict,
            CommuneSyncError::Storage(_) => ErrorKind::Storage,
        }
    }

    pub(crate) fn invalid(what: impl std::fmt::Display) -> Self {
        CommuneSyncError::InvalidInput(what.to_string())
    }
}

impl From<CoreError> for CommuneSyncError {
    fn from(err: CoreError) -> Self {
        let message = err.to_string();
        match err {
            CoreError::NotFound(_) | CoreError::WrongKind { .. } => {
                CommuneSyncError::NotFound(message)
            }
            CoreError::InvalidInput { .. } | CoreError::UnknownProcedure(_) => {
                CommuneSyncError::InvalidInput(message)
            }
            CoreError::IllegalTransition { .. } => CommuneSyncError::Conflict(message),
            _ => CommuneSyncError::Storage(message),
        }
    }
}

impl From<SyncError> for CommuneSyncError {
    fn from(err: SyncError) -> Self {
        let message = err.to_string();
        match err {
            SyncError::Offline(_) | SyncError::Server(_) | SyncError::Protocol(_) => {
                CommuneSyncError::Offline(message)
            }
            // Too many tries (rate limited) is a "later", not a "never".
            SyncError::Rejected { status: 429, .. } => CommuneSyncError::Offline(message),
            SyncError::Unauthorized => CommuneSyncError::Unauthorized(message),
            SyncError::Revoked => CommuneSyncError::Revoked(message),
            SyncError::Wiped(_) => CommuneSyncError::Wiped(message),
            SyncError::UpgradeRequired(_) => CommuneSyncError::UpgradeRequired(message),
            // The reason alone: the case already says "untrusted server".
            SyncError::UntrustedServer(reason) => CommuneSyncError::UntrustedServer(reason),
            SyncError::Forbidden(_) | SyncError::Rejected { .. } => {
                CommuneSyncError::InvalidInput(message)
            }
            SyncError::Store(core) => core.into(),
            _ => CommuneSyncError::Offline(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use communesync_core::record::RecordId;

    #[test]
    fn core_and_sync_errors_map_to_the_cases_apps_act_on() {
        let id = RecordId::new();
        assert_eq!(
            CommuneSyncError::from(CoreError::NotFound(id)).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            CommuneSyncError::from(CoreError::UnknownProcedure("x".into())).kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            CommuneSyncError::from(CoreError::IllegalTransition {
                from: "returned".into(),
                to: "received".into()
            })
            .kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            CommuneSyncError::from(CoreError::WrongKey).kind(),
            ErrorKind::Storage
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::Offline("no route".into())).kind(),
            ErrorKind::Offline
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::Unauthorized).kind(),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::Revoked).kind(),
            ErrorKind::Revoked
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::Wiped("stolen".into())).kind(),
            ErrorKind::Wiped
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::UpgradeRequired("protocol 2".into())).kind(),
            ErrorKind::UpgradeRequired
        );
        assert_eq!(
            CommuneSyncError::from(SyncError::UntrustedServer("expired".into())).kind(),
            ErrorKind::UntrustedServer
        );
        let limited = SyncError::Rejected {
            status: 429,
            code: "rate_limited".into(),
            message: "slow down".into(),
        };
        assert_eq!(CommuneSyncError::from(limited).kind(), ErrorKind::Offline);
        let err = CommuneSyncError::from(CoreError::NotFound(id));
        assert!(err.to_string().contains(&id.to_string()), "{err}");
    }
}
