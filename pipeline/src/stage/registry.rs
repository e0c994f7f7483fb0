//! The stage kinds a binary knows: each registered once, by kind name, none declaring a runner
//! parameter.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Stage, RUNNER_PARAMS};

/// The stage kinds a binary knows, by kind name.
#[derive(Default, Clone)]
pub struct StageRegistry {
    stages: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl StageRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, stage: Arc<dyn Stage>) {
        let kind = stage.kind();
        for p in stage.params() {
            assert!(
                !RUNNER_PARAMS.iter().any(|(name, _)| *name == p.name),
                "stage kind `{kind}` declares `{}`, a parameter the runner reserves",
                p.name
            );
        }
        assert!(
            self.stages.insert(kind, stage).is_none(),
            "stage kind `{kind}` registered twice"
        );
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.stages.values()
    }
}
