//! External ids of imported dossiers on the server: the key of an entry of a commune's register
//! (issue 15, register import) belongs to one record of that commune.
//!
//! Contract: a new application pushed with an import marker is admitted only if no other record
//! of its commune holds its external id (stored, or admitted earlier in the same push); admitted
//! keys are claimed in one storage transaction before the records are stored, and a record
//! whose key a concurrent push claimed first is refused too. A refusal has the code
//! `external_id` and concerns that document only; nothing of it is stored. A record pushed again
//! (a lost answer) finds its own claim and is accepted. The marker's immutability and its
//! times are the shared rules' (`core/src/integrity`), checked before this.

use communesync_core::integrity::{Refusal, RefusalCode};
use communesync_core::record::{Application, DeviceId, RecordId};

use crate::storage::{ExternalIdClaim, Result, ServerStorage};

fn refusal(external_id: &str) -> Refusal {
    Refusal::new(
        RefusalCode::ExternalId,
        format!("external id {external_id:?} of this commune's register belongs to another record"),
    )
}

/// The new imported applications of one push: checked one by one, claimed once all are judged.
#[derive(Default)]
pub(crate) struct NewImports {
    admitted: Vec<ExternalIdClaim>,
}

impl NewImports {
    /// Checks `app`'s external id, if it is an imported dossier. The outer error is storage's,
    /// the inner the refusal.
    pub(crate) async fn admit(
        &mut self,
        storage: &dyn ServerStorage,
        app: &Application,
    ) -> Result<std::result::Result<(), Refusal>> {
        let Some(imported) = &app.imported else {
            return Ok(Ok(()));
        };
        let (commune, key) = (&app.commune_code, &imported.external_id);
        let in_push = self
            .admitted
            .iter()
            .any(|c| c.commune == *commune && c.external_id == *key && c.doc != app.id);
        let stored = storage
            .external_id(commune, key)
            .await?
            .is_some_and(|(doc, _)| doc != app.id);
        if in_push || stored {
            return Ok(Err(refusal(key)));
        }
        self.admitted.push(ExternalIdClaim {
            commune: commune.clone(),
            external_id: key.clone(),
            doc: app.id,
        });
        Ok(Ok(()))
    }

    /// Claims the admitted keys; returns the records that lost theirs to a concurrent push,
    /// with their refusal.
    pub(crate) async fn claim(
        &self,
        storage: &dyn ServerStorage,
        device: DeviceId,
        now: i64,
    ) -> Result<Vec<(RecordId, Refusal)>> {
        let lost = storage
            .claim_external_ids(device, &self.admitted, now)
            .await?;
        Ok(lost
            .into_iter()
            .filter_map(|doc| {
                let claim = self.admitted.iter().find(|c| c.doc == doc)?;
                Some((doc, refusal(&claim.external_id)))
            })
            .collect())
    }
}
