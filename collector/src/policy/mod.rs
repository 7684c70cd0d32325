//! Policies of a collector: the `--policy` files ([`files`], hot reloaded), the policy objects
//! in a cluster ([`crds`], with their status), the one store both feed ([`store`]), and the
//! enforce-mode policy sets published to every agent ([`publish`]), and what each agent reports
//! about the set it enforces ([`reports`], folded into the objects' status).

pub mod crds;
pub mod files;
pub mod publish;
pub mod reports;
pub mod store;
