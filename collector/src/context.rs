//! Who made a call, as the policies see it: the one place the collector builds an
//! [`EvalContext`] from an event.
//!
//! `MmapEvent` carries no Kubernetes attribution yet, so every caller is a host process whose
//! executable is unknown (policies match it by `comm`). When attribution lands in the event,
//! this function becomes a call of `mapsentry_policy::context::eval_context`.

use mapsentry_policy::{EvalContext, MmapEvent};

/// The caller of `event`, for policy evaluation.
#[must_use]
pub fn eval_context(_event: &MmapEvent) -> EvalContext {
    EvalContext {
        executable: None,
        workload: None,
    }
}
