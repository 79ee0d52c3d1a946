//! Persistence: sessions that outlive their connection, their queues and in-flight
//! messages, and retained messages survive restarts and crashes.
//!
//! Nothing here is on the path of a client that does not ask for a persistent session. The
//! session machine, mailbox, registry and broker record changes of persistent sessions and
//! of the retained tree as [`Journal`] operations: a channel send, no I/O. One writer
//! thread ([`writer`]) turns them into row changes — keeping one copy of each message
//! however many sessions queue it, with reference counts — and commits them in batches
//! (group commit) to a [`Store`]: redb on disk ([`RedbStore`]) or memory ([`MemoryStore`]).
//! At start, [`open`] reads the store back ([`recovery`]) before any listener opens.
//!
//! The store is a narrow key-value seam (tables of byte keys and values, scanned at start
//! and changed in atomic batches), so another backend (a replicated key-value store) is
//! an addition, not a rewrite.

mod amqp;
mod codec;
mod journal;
mod memory;
mod recovery;
mod redb_store;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};

pub use amqp::AmqpQueueRecord;
pub use codec::{CodecError, SessionRecord};
pub use journal::{Journal, SessionJournal, StoreStats};
pub use memory::MemoryStore;
pub use recovery::{Losses, Recovered, RecoveredAmqpQueue, RecoveredSession};
pub use redb_store::RedbStore;

use crate::config::{StorageBackend, StorageConfig};

/// The layout version of everything in the store. A store with a higher version was
/// written by a newer midge and is refused, never rewritten.
pub const FORMAT_VERSION: u32 = 1;

/// The tables of the store. Keys of session-owned tables start with the length-prefixed
/// client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `format` → format version.
    Meta,
    /// client → session record (incarnation, expiry).
    Sessions,
    /// client + filter → options and identifier.
    Subscriptions,
    /// client + queue sequence → delivery (message id, QoS, flags).
    Queue,
    /// client + packet id → stage, resend order, delivery.
    Inflight,
    /// client + packet id → the PUBREC reason code: inbound QoS 2 ids awaiting PUBREL.
    /// Rows written before the reason was kept are empty, and read as success.
    Pubrel,
    /// client → delayed will.
    Wills,
    /// message id → message, shared by queue and in-flight rows.
    Messages,
    /// topic → retained message.
    Retained,
    /// AMQP queue name → declaration of a durable queue (its contents are a session).
    AmqpQueues,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::Sessions,
        Table::Subscriptions,
        Table::Queue,
        Table::Inflight,
        Table::Pubrel,
        Table::Wills,
        Table::Messages,
        Table::Retained,
        Table::AmqpQueues,
    ];

    /// The table's name in the store.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Sessions => "sessions",
            Table::Subscriptions => "subscriptions",
            Table::Queue => "queue",
            Table::Inflight => "inflight",
            Table::Pubrel => "pubrel",
            Table::Wills => "wills",
            Table::Messages => "messages",
            Table::Retained => "retained",
            Table::AmqpQueues => "amqp_queues",
        }
    }
}

/// One row change: `value` `None` deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOp {
    /// Which table.
    pub table: Table,
    /// The row's key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// The key of the format-version row in [`Table::Meta`].
pub const FORMAT_KEY: &[u8] = b"format";

/// A place rows live: scanned at start, changed in atomic batches by one writer.
pub trait Store: Send + fmt::Debug {
    /// Where it is, for messages (a path, or "memory").
    fn location(&self) -> String;

    /// Calls `visit` with every row of `table`, in key order.
    fn scan(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError>;

    /// Applies `rows` in order, all or nothing. With `durable`, they are on disk when this
    /// returns; without, they may be lost in a crash but never half-applied.
    fn apply(&mut self, rows: &[RowOp], durable: bool) -> Result<(), StoreError>;
}

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage directory could not be created.
    #[error("cannot create the storage directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error(
        "store {path} is in use by another process (is another midge running with the same storage.dir?)"
    )]
    InUse {
        /// The store file.
        path: String,
    },
    /// The store is damaged or cannot be read.
    #[error(
        "store {path} is damaged or unreadable: {what}. Start with --recover to keep what is readable and move the damaged file aside"
    )]
    Damaged {
        /// The store file.
        path: String,
        /// What failed.
        what: String,
    },
    /// The store was written by a newer midge.
    #[error(
        "store {path} has format version {found}, but this midge reads only up to version {supported}; run the newer midge that wrote it, or point storage.dir elsewhere"
    )]
    NewerFormat {
        /// The store file.
        path: String,
        /// The version found.
        found: u32,
        /// The highest version this build reads.
        supported: u32,
    },
    /// A read or write failed while running.
    #[error("store {path}: {what}")]
    Failed {
        /// The store file.
        path: String,
        /// What failed.
        what: String,
    },
    /// Recovery could not set the damaged file aside.
    #[error("cannot move the damaged store {path} aside to {aside}: {source}")]
    SetAside {
        /// The store file.
        path: String,
        /// Where it was to go.
        aside: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How [`open`] treats the store.
#[derive(Debug, Default)]
pub struct Opening {
    /// `--recover`: a damaged store is not a reason to refuse to start; keep what is
    /// readable, move the damaged file aside and say what was lost.
    pub recover: bool,
    /// Use this store instead of the configured one (tests and embedders: a
    /// [`MemoryStore`] shared across restarts in one process).
    pub store: Option<Box<dyn Store>>,
}

/// Opens the configured store, reads it back, and starts the writer. Blocking: call it
/// off the async runtime's worker threads.
pub fn open(config: &StorageConfig, opening: Opening) -> Result<(Journal, Recovered), StoreError> {
    let (store, loaded) = match opening.store {
        Some(store) => {
            let loaded = recovery::load(&*store, opening.recover)?;
            (store, loaded)
        }
        None => match config.backend {
            StorageBackend::Memory => {
                let store: Box<dyn Store> = Box::new(MemoryStore::default());
                let loaded = recovery::load(&*store, false)?;
                (store, loaded)
            }
            StorageBackend::Redb => {
                let path = store_path(&config.dir);
                std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Directory {
                    path: config.dir.clone(),
                    source,
                })?;
                open_redb(&path, opening.recover)?
            }
        },
    };
    let recovery::Loaded {
        recovered,
        index,
        cleanup,
        max_message_id,
        max_session_id,
    } = loaded;
    crate::model::message_ids_above(max_message_id);
    crate::model::session_ids_above(max_session_id);
    let location = store.location();
    let journal = writer::spawn(store, config, index, cleanup)?;
    tracing::info!(
        store = %location,
        durability = ?config.durability,
        "store open: persistent sessions and retained messages are kept here"
    );
    Ok((journal, recovered))
}

/// The redb file inside `dir`.
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("midge.redb")
}

/// Opens and reads the redb file; with `recover`, a damaged file is moved aside and what
/// could be read from it goes into a fresh one.
fn open_redb(path: &Path, recover: bool) -> Result<(Box<dyn Store>, recovery::Loaded), StoreError> {
    let damage = match RedbStore::open(path) {
        Ok(store) => match recovery::load(&store, false) {
            Ok(loaded) => return Ok((Box::new(store), loaded)),
            Err(StoreError::Damaged { what, .. }) if recover => {
                drop(store);
                what
            }
            Err(e) => return Err(e),
        },
        Err(StoreError::Damaged { what, .. }) if recover => what,
        Err(e) => return Err(e),
    };
    let location = path.display().to_string();
    tracing::warn!(store = %location, "store is damaged ({damage}); recovering what is readable");
    let aside = aside_path(path);
    std::fs::rename(path, &aside).map_err(|source| StoreError::SetAside {
        path: location.clone(),
        aside: aside.clone(),
        source,
    })?;
    let salvage = redb_store::salvage(&aside);
    let mut store = RedbStore::open(path)?;
    store.apply(&salvage.rows, true)?;
    let loaded = recovery::load(&store, true)?;
    let mut lost: Vec<String> = salvage.unreadable;
    lost.extend(loaded.recovered.losses.describe());
    tracing::warn!(
        store = %location,
        damaged_file = %aside.display(),
        rows_kept = salvage.rows.len(),
        "recovered the store: the damaged file was moved aside; lost: {}",
        if lost.is_empty() { "nothing".to_owned() } else { lost.join("; ") }
    );
    Ok((Box::new(store), loaded))
}

/// `midge.redb.damaged-<unix seconds>` beside the store (with a counter if taken).
fn aside_path(path: &Path) -> PathBuf {
    let secs = crate::model::now_millis() / 1000;
    let name = path
        .file_name()
        .map_or_else(|| "midge.redb".into(), |n| n.to_string_lossy().into_owned());
    let mut candidate = path.with_file_name(format!("{name}.damaged-{secs}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{name}.damaged-{secs}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests;
