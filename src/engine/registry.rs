//! Stage kinds by name. The binary registers the built-in kinds
//! (`crate::stages::registry`); tests and embedders may register their own.

use super::stage::Stage;
use crate::pipeline::KindInfo;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a stage kind.
    pub fn register(&mut self, stage: impl Stage + 'static) -> &mut Self {
        self.kinds.insert(stage.kind(), Arc::new(stage));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.kinds.values()
    }
}

impl KindInfo for Registry {
    fn known(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }
    fn gathers(&self, kind: &str) -> bool {
        self.kinds.get(kind).is_some_and(|s| s.gathers())
    }
    fn names(&self) -> Vec<String> {
        self.kinds.keys().map(|k| k.to_string()).collect()
    }
}
