//! The store on disk: one redb file, one redb table per [`Table`], byte keys and values.
//!
//! redb commits atomically (copy-on-write B-trees with checksums), so a crash leaves the
//! last committed state. The file is opened with the integrity check on, so a file damaged
//! outside redb is reported as corrupted instead of trusted. redb may still panic on some
//! damage (its debug builds assert on impossible states), so opening and reading run under
//! `catch_unwind` and a panic becomes a [`StoreError::Damaged`]: a bad file never takes the
//! broker down.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableError,
};

use super::{RowOp, Store, StoreError, Table};

/// Cache for redb pages. The store is read once at start and written after; a large cache
/// would only hold memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// See the module documentation.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic while reading the file".to_owned())
}

impl RedbStore {
    /// Opens (or creates) the store file, checking its integrity.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let damaged = |what: String| StoreError::Damaged {
            path: location.clone(),
            what,
        };
        let opened = catch_unwind(|| {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create(path)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::InUse { path: location });
            }
            Ok(Err(e)) => return Err(damaged(format!("cannot open it: {e}"))),
            Err(panic) => return Err(damaged(format!("cannot open it: {}", panic_text(&*panic)))),
        };
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn scan_table(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = match txn.open_table(definition(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        for entry in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            visit(k.value(), v.value());
        }
        Ok(())
    }

    fn write(&self, rows: &[RowOp], durable: bool) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| e.to_string())?;
        }
        {
            // Open only the tables this batch touches, each once.
            let mut tables = Vec::new();
            for table in Table::ALL {
                if rows.iter().any(|r| r.table == table) {
                    let t = txn
                        .open_table(definition(table))
                        .map_err(|e| e.to_string())?;
                    tables.push((table, t));
                }
            }
            for row in rows {
                let Some((_, t)) = tables.iter_mut().find(|(name, _)| *name == row.table) else {
                    continue;
                };
                match &row.value {
                    Some(v) => {
                        t.insert(row.key.as_slice(), v.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                    None => {
                        t.remove(row.key.as_slice()).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

impl Store for RedbStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn scan(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let result = catch_unwind(AssertUnwindSafe(|| self.scan_table(table, visit)));
        let what = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(panic) => panic_text(&*panic),
        };
        Err(StoreError::Damaged {
            path: self.location(),
            what: format!("reading table `{}`: {what}", table.name()),
        })
    }

    fn apply(&mut self, rows: &[RowOp], durable: bool) -> Result<(), StoreError> {
        let result = catch_unwind(AssertUnwindSafe(|| self.write(rows, durable)));
        let what = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(panic) => panic_text(&*panic),
        };
        Err(StoreError::Failed {
            path: self.location(),
            what: format!("commit failed: {what}"),
        })
    }
}

/// What could be read from a damaged file.
#[derive(Debug, Default)]
pub(crate) struct Salvage {
    /// Every row read, as inserts.
    pub(crate) rows: Vec<RowOp>,
    /// What could not be read, for the log.
    pub(crate) unreadable: Vec<String>,
}

/// Reads whatever is readable from the damaged file at `damaged`, table by table, working
/// on a copy (opening may repair, and the damaged file is kept as it was).
pub(crate) fn salvage(damaged: &Path) -> Salvage {
    let mut salvage = Salvage::default();
    let copy = damaged.with_extension("salvage-tmp");
    if let Err(e) = std::fs::copy(damaged, &copy) {
        salvage
            .unreadable
            .push(format!("everything: cannot copy the damaged file: {e}"));
        return salvage;
    }
    // First as redb opens after a crash (repairing), then trusting the file as it is.
    type Open = fn(&Path) -> Result<Database, DatabaseError>;
    let attempts: [Open; 2] = [
        |p| Builder::new().set_cache_size(CACHE_BYTES).create(p),
        |p| {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create(p)
        },
    ];
    let mut db = None;
    let mut errors = Vec::new();
    for open in attempts {
        match catch_unwind(|| open(&copy)) {
            Ok(Ok(opened)) => {
                db = Some(opened);
                break;
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(panic) => errors.push(panic_text(&*panic)),
        }
    }
    match db {
        None => salvage.unreadable.push(format!(
            "everything: the file cannot be opened ({})",
            errors.join("; ")
        )),
        Some(db) => {
            let store = RedbStore {
                db,
                path: copy.clone(),
            };
            for table in Table::ALL {
                let mut rows = Vec::new();
                let read = catch_unwind(AssertUnwindSafe(|| {
                    store.scan_table(table, &mut |k, v| {
                        rows.push(RowOp {
                            table,
                            key: k.to_vec(),
                            value: Some(v.to_vec()),
                        });
                    })
                }));
                let failed = match read {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(panic) => Some(panic_text(&*panic)),
                };
                if let Some(e) = failed {
                    salvage.unreadable.push(format!(
                        "table `{}` after {} readable rows ({e})",
                        table.name(),
                        rows.len()
                    ));
                }
                salvage.rows.extend(rows);
            }
        }
    }
    let _ = std::fs::remove_file(&copy);
    salvage
}
