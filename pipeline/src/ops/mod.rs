//! Operations over a plan and a store: `explain` (why would this re-run?), `gc` (delete what the
//! store owns and nobody needs), `verify` (rehash artifacts against their manifests) and `forget`
//! (drop instances from a manifest's run index).

mod explain;
mod forget;
mod gc;
mod verify;

pub use explain::{explain, format_unix};
pub use forget::{forget, Forgotten};
pub use gc::{gc, GcReport, GcScope, BOOKKEEPING};
pub use verify::{all_artifacts, verify, Verified};
