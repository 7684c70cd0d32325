//! mapsentry's event model and mapping policies: what one captured `mmap`/`mmap2` call is, how its
//! bits are named, its JSON line form; the policy resources, their loading and validation, the
//! compiled matchers, evaluation and alert aggregation. Pure code: no I/O, no async, no kernel.
#![forbid(unsafe_code)]

pub mod alert;
pub mod compile;
pub mod context;
pub mod crd;
pub mod enforce;
pub mod evaluate;
pub mod event;
pub mod field_path;
pub mod load;
pub mod policy;
mod schema_check;
pub mod selector;
pub mod status;
pub mod store;
pub mod time;

pub use alert::{Aggregator, AlertLine};
pub use compile::{CompiledPolicy, compile};
pub use context::{EvalContext, PodContext, eval_context};
pub use crd::{Action, ClusterMmapPolicy, MmapPolicy, Mode};
pub use evaluate::{CallerScope, Match, PolicySet, strongest};
pub use event::{
    EnforceAction, Enforcement, EventLine, FileInfo, MmapArgs, MmapEvent, Syscall, TargetMapping,
    attribution::{Attribution, K8sMeta, Workload},
    names,
};
pub use field_path::{FieldPath, Problem};
pub use load::{LoadError, LoadOutcome, Loaded, load_str};
pub use policy::{Policy, PolicyId};
pub use store::{PolicyStore, Reload};
