//! Dossier numbers for the apps: find an application by the number a citizen quotes, and what
//! the tablet has left to number with (to show the officer, and to sync before running out).
//! Every new application gets its number at intake, offline (see `communesync_core::numbering`);
//! the number is on [`Application::dossier_number`].

use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::types::Application;

/// What this tablet has to number dossiers with.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DossierNumberState {
    /// The province's number format (`{agency}-{yymmdd}-{seq:6}` by default).
    pub format: String,
    /// Numbers left in the blocks this tablet holds; at 0, intake goes on with flagged fallback
    /// numbers until the next sync.
    pub remaining: u64,
    /// Blocks held (used up or not).
    pub blocks: u32,
    /// Fallback numbers given so far.
    pub fallback_used: u64,
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// The application with this dossier number (exact, surrounding spaces ignored), taken here
    /// or pulled from the server; `None` if the store has none. The number is also found by
    /// [`Engine::search`].
    pub async fn application_by_number(
        &self,
        number: String,
    ) -> Result<Option<Application>, CommuneSyncError> {
        self.with_store(move |store| Ok(store.application_by_number(&number)?.map(Into::into)))
            .await
    }

    /// What this tablet has to number dossiers with.
    pub async fn dossier_number_state(&self) -> Result<DossierNumberState, CommuneSyncError> {
        self.with_store(move |store| {
            let state = store.number_state()?;
            Ok(DossierNumberState {
                format: store.number_format()?,
                remaining: state.remaining,
                blocks: u32::try_from(store.number_blocks()?.len()).unwrap_or(u32::MAX),
                fallback_used: state.fallback_used,
            })
        })
        .await
    }
}
