//! Operations over a plan and a store: `explain` (why would this re-run?), `gc` (delete what the
//! store owns and nobody needs), `verify` (rehash artifacts against their manifests) and `forget`
//! (drop instances from a manifest's run index).

mod compare;
mod explain;
mod forget;
mod gc;
mod verify;

pub use compare::{
    compare, instance_diff, param_changes, InputChange, InstanceDiff, ParamChange, PlanDiff,
};
pub use explain::{explain, format_unix, Against, Baseline, Change, ChangeKind, Explanation};
pub use forget::{forget, Forgotten};
pub use gc::{gc, GcReport, GcScope, BOOKKEEPING};
pub use verify::{all_artifacts, verify, Verified};
