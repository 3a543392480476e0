//! A fault-injecting wrapper around any table, for proving what callers see when storage
//! fails: a write refused before it is applied, or applied with its answer lost (the
//! ambiguous outcome of a timeout after commit). Rules are armed and counted at run time
//! through a shared [`Faults`] handle.

use std::sync::{Arc, Mutex};

use super::{Item, Page, Query, StoreError, Table, Write};

/// When a write fails.
#[derive(Debug, Clone)]
pub struct WriteFault {
    /// Only batches with a write to a partition key starting with this ("" for any).
    pub touching: String,
    /// Matching batches to let through before failing.
    pub skip: usize,
    /// Matching batches to fail after that.
    pub times: usize,
    /// Apply the batch and then report it failed (the caller cannot tell it landed).
    pub after_commit: bool,
}

#[derive(Debug, Default)]
struct Rules {
    writes: Vec<WriteFault>,
    injected: usize,
}

/// The switchboard a test holds; clones share the same rules.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
}

enum Verdict {
    Pass,
    FailBefore,
    FailAfter,
}

impl Faults {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail_writes(&self, fault: WriteFault) {
        self.lock().writes.push(fault);
    }

    /// How many failures have been injected so far.
    pub fn injected(&self) -> usize {
        self.lock().injected
    }

    /// Disarms every rule.
    pub fn clear(&self) {
        self.lock().writes.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn judge_write(&self, writes: &[Write]) -> Verdict {
        let mut rules = self.lock();
        let touches = |prefix: &str| {
            writes.iter().any(|w| match w {
                Write::Put { item, .. } => item.pk.starts_with(prefix),
                Write::Delete { pk, .. } | Write::Check { pk, .. } => pk.starts_with(prefix),
            })
        };
        let mut verdict = Verdict::Pass;
        for rule in rules.writes.iter_mut() {
            if rule.times == 0 || !touches(&rule.touching) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            rule.times -= 1;
            verdict = if rule.after_commit {
                Verdict::FailAfter
            } else {
                Verdict::FailBefore
            };
            break;
        }
        if !matches!(verdict, Verdict::Pass) {
            rules.injected += 1;
        }
        rules.writes.retain(|r| r.times > 0);
        verdict
    }
}

fn injected() -> StoreError {
    StoreError::Unavailable("injected fault".into())
}

pub struct FaultyTable {
    inner: Table,
    faults: Faults,
}

impl FaultyTable {
    pub fn new(inner: Table, faults: Faults) -> Self {
        Self { inner, faults }
    }

    pub(super) fn inner(&self) -> &Table {
        &self.inner
    }

    pub(super) async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.inner.get(pk, sk).await
    }

    pub(super) async fn write(&self, writes: Vec<Write>) -> Result<Vec<u64>, StoreError> {
        match self.faults.judge_write(&writes) {
            Verdict::Pass => self.inner.write(writes).await,
            Verdict::FailBefore => Err(injected()),
            Verdict::FailAfter => {
                self.inner.write(writes).await?;
                Err(injected())
            }
        }
    }

    pub(super) async fn query(&self, query: Query, index: bool) -> Result<Page, StoreError> {
        if index {
            self.inner.query_index(query).await
        } else {
            self.inner.query(query).await
        }
    }
}
