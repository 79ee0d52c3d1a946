//! The store in process memory: `backend = "memory"`, and a store tests can keep across
//! broker restarts inside one process (clones share the same rows).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{RowOp, Store, StoreError, Table};

type Rows = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    rows: Arc<Mutex<Rows>>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Rows> {
        // Every change is applied under the lock in one go; a poisoned lock still holds a
        // consistent map.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of rows in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.lock().get(&table).map_or(0, BTreeMap::len)
    }

    /// True when no table holds a row.
    pub fn is_empty(&self) -> bool {
        self.lock().values().all(BTreeMap::is_empty)
    }

    /// Replaces a row's value as stored (tests: simulating damage).
    pub fn put_raw(&self, table: Table, key: &[u8], value: &[u8]) {
        self.lock()
            .entry(table)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn scan(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        // Copy out first so `visit` runs without the lock.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (k, v) in &rows {
            visit(k, v);
        }
        Ok(())
    }

    fn apply(&mut self, rows: &[RowOp], _durable: bool) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for row in rows {
            let table = tables.entry(row.table).or_default();
            match &row.value {
                Some(v) => {
                    table.insert(row.key.clone(), v.clone());
                }
                None => {
                    table.remove(&row.key);
                }
            }
        }
        Ok(())
    }
}
