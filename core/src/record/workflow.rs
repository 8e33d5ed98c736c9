//! Status workflows. Transitions are checked against the current value on the device that makes
//! the edit; concurrent different transitions on two tablets surface as a conflict on `status`.

use std::fmt;
use std::str::FromStr;

use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Status of an application, following the one-stop-shop procedure:
/// received → in_progress ⇄ supplement_requested, in_progress → ready → returned;
/// rejected and withdrawn end an open application where the procedure allows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Reconcile,
    Hydrate,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Received at the centre or in the field, not yet processed.
    #[autosurgeon(rename = "received")]
    Received,
    /// Being processed by the specialist department.
    #[autosurgeon(rename = "in_progress")]
    InProgress,
    /// Waiting for the applicant to supply missing papers.
    #[autosurgeon(rename = "supplement_requested")]
    SupplementRequested,
    /// The result is ready to be returned to the applicant.
    #[autosurgeon(rename = "ready")]
    Ready,
    /// The result was handed to the applicant (terminal).
    #[autosurgeon(rename = "returned")]
    Returned,
    /// Refused, with reasons in the notes (terminal).
    #[autosurgeon(rename = "rejected")]
    Rejected,
    /// Withdrawn by the applicant (terminal).
    #[autosurgeon(rename = "withdrawn")]
    Withdrawn,
}

impl Status {
    /// Every status, in workflow order.
    pub const ALL: [Status; 7] = [
        Status::Received,
        Status::InProgress,
        Status::SupplementRequested,
        Status::Ready,
        Status::Returned,
        Status::Rejected,
        Status::Withdrawn,
    ];

    /// The name used on disk, on the wire and in the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::InProgress => "in_progress",
            Status::SupplementRequested => "supplement_requested",
            Status::Ready => "ready",
            Status::Returned => "returned",
            Status::Rejected => "rejected",
            Status::Withdrawn => "withdrawn",
        }
    }

    /// Whether the statutory clock still runs (the application is not finished).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Status::Received | Status::InProgress | Status::SupplementRequested
        )
    }

    /// Whether `self → to` is a step of the workflow. `withdrawal_allowed` comes from the
    /// procedure catalogue: some procedures cannot be withdrawn once received.
    pub fn can_move_to(self, to: Status, withdrawal_allowed: bool) -> bool {
        use Status::*;
        match (self, to) {
            (Received, InProgress) => true,
            (InProgress, SupplementRequested) => true,
            (SupplementRequested, InProgress) => true,
            (InProgress, Ready) => true,
            (Ready, Returned) => true,
            (Received | InProgress | SupplementRequested, Rejected) => true,
            (Received | InProgress | SupplementRequested, Withdrawn) => withdrawal_allowed,
            _ => false,
        }
    }

    /// Checks a transition, with a clear error when it is not allowed.
    pub fn check_transition(self, to: Status, withdrawal_allowed: bool) -> Result<()> {
        if self.can_move_to(to, withdrawal_allowed) {
            Ok(())
        } else {
            Err(Error::IllegalTransition {
                from: self.as_str().to_owned(),
                to: to.as_str().to_owned(),
            })
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::invalid("status", format!("unknown status {s:?}")))
    }
}

/// Status of a citizen request: received → in_progress → resolved → closed; rejected from an
/// open state.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Reconcile,
    Hydrate,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Raised, not yet looked at.
    #[autosurgeon(rename = "received")]
    Received,
    /// Someone is working on it.
    #[autosurgeon(rename = "in_progress")]
    InProgress,
    /// Answered or fixed; waiting for the citizen's confirmation.
    #[autosurgeon(rename = "resolved")]
    Resolved,
    /// Closed (terminal).
    #[autosurgeon(rename = "closed")]
    Closed,
    /// Not within the commune's remit (terminal).
    #[autosurgeon(rename = "rejected")]
    Rejected,
}

impl RequestStatus {
    /// Every status, in workflow order.
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Received,
        RequestStatus::InProgress,
        RequestStatus::Resolved,
        RequestStatus::Closed,
        RequestStatus::Rejected,
    ];

    /// The name used on disk, on the wire and in the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Received => "received",
            RequestStatus::InProgress => "in_progress",
            RequestStatus::Resolved => "resolved",
            RequestStatus::Closed => "closed",
            RequestStatus::Rejected => "rejected",
        }
    }

    /// Checks a transition, with a clear error when it is not allowed.
    pub fn check_transition(self, to: RequestStatus) -> Result<()> {
        use RequestStatus::*;
        let ok = matches!(
            (self, to),
            (Received, InProgress)
                | (InProgress, Resolved)
                | (Resolved, Closed)
                | (Resolved, InProgress)
                | (Received | InProgress, Rejected)
        );
        if ok {
            Ok(())
        } else {
            Err(Error::IllegalTransition {
                from: self.as_str().to_owned(),
                to: to.as_str().to_owned(),
            })
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RequestStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::invalid("status", format!("unknown request status {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_and_supplement_loop_are_allowed() {
        use Status::*;
        let path = [
            Received,
            InProgress,
            SupplementRequested,
            InProgress,
            Ready,
            Returned,
        ];
        for pair in path.windows(2) {
            pair[0].check_transition(pair[1], true).unwrap();
        }
    }

    #[test]
    fn illegal_transitions_are_refused_with_names() {
        let err = Status::Received
            .check_transition(Status::Returned, true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot move from status received to returned"
        );
        assert!(
            Status::Returned
                .check_transition(Status::InProgress, true)
                .is_err()
        );
        assert!(
            Status::Ready
                .check_transition(Status::Rejected, true)
                .is_err()
        );
    }

    #[test]
    fn withdrawal_follows_the_procedure() {
        assert!(Status::InProgress.can_move_to(Status::Withdrawn, true));
        assert!(!Status::InProgress.can_move_to(Status::Withdrawn, false));
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        for s in RequestStatus::ALL {
            assert_eq!(s.as_str().parse::<RequestStatus>().unwrap(), s);
        }
        assert!("done".parse::<Status>().is_err());
    }
}
