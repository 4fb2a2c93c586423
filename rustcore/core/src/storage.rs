//! Durable storage for the sans-I/O seam: many append-only logs and one key space per component, in
//! one embedded engine (tikv's raft-engine), written in atomic batches.
//!
//! The semantics are those of `daemon/pyagent/proto/storage.py` (and its in-memory twin `memstore.py`):
//! - `Put`, `Delete`, `DeleteRange [start, end)` on the component's keys;
//! - `LogAppend` writes entries from `first_index`, replaces what was there and drops the tail after
//!   the new last entry; an append past `last + 1` (a hole) or below the first index is refused;
//! - `LogTruncate` drops entries `>= from_index`, `LogCompact` drops entries `< to_index`.
//!
//! One call to [`Store::write`] folds every batch it is given into ONE raft-engine `LogBatch` and ONE
//! write (group commit): the whole call is checked before anything is written, so it lands all or
//! nothing, also across a crash (raft-engine checksums each batch and drops a torn tail on recovery).
//!
//! raft-engine knows numbered regions, not names. Region [`DIRECTORY_REGION`] holds the directory that
//! maps each component's key space and each `(component, log)` to a region id; a record is written in
//! the same batch that first uses its id, so a name and its data land together. Ids only grow (the next
//! one is persisted too), so an id is never reused, even for a log that was emptied and started again.
//!
//! Invariant between calls: a log named in the directory holds at least one entry, and its region
//! holds exactly the log's entries. A log that becomes empty has its region cleaned and its record
//! deleted; when it gets entries again it gets a new region. That keeps raft-engine away from the two
//! things it panics on (an append that leaves a hole, an append below its compacted first index).
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize};
use raft_proto::eraftpb::Entry;

/// Region of the directory records (name -> region id). Data regions start after it.
pub const DIRECTORY_REGION: u64 = 1;
const FIRST_DATA_REGION: u64 = 2;

/// Directory keys: `n` holds the next region id; `k<component>` a component's key space;
/// `l<len:u32 BE><component><log>` a log.
const DIR_NEXT_ID: &[u8] = b"n";
const DIR_KV: u8 = b'k';
const DIR_LOG: u8 = b'l';

/// raft-engine reserves keys that begin with `__`; every user key is stored behind this byte, which
/// also gives an exclusive upper bound for an unbounded scan (`VALUE_PREFIX + 1`).
const VALUE_PREFIX: u8 = b'v';

/// raft-engine files: small enough that purging frees space in steps, large enough to be rare.
const TARGET_FILE_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Above this much in the append queue, purging rewrites live data and deletes old files.
const PURGE_THRESHOLD_BYTES: u64 = 512 * 1024 * 1024;
/// Purge is ours to call (raft-engine never runs it by itself): after this many bytes written.
const PURGE_EVERY_BYTES: usize = 64 * 1024 * 1024;

/// One op of a write batch; the same six ops as `pyagent.proto.storage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
    LogAppend {
        log: String,
        first_index: u64,
        entries: Vec<Vec<u8>>,
    },
    LogTruncate {
        log: String,
        from_index: u64,
    },
    LogCompact {
        log: String,
        to_index: u64,
    },
}

/// The ops of one component's batch, applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    pub component: String,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The caller's bug (an append that leaves a hole, an index of 0): nothing was written.
    Invalid(String),
    /// A read of log entries that are not all held.
    OutOfRange(String),
    /// The disk or the engine failed. The store refuses every later call: what is on disk is whatever
    /// the last successful write left, and only a restart (recovery) may say more.
    Engine(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Invalid(message) | StoreError::OutOfRange(message) => f.write_str(message),
            StoreError::Engine(message) => write!(f, "storage failed: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How raft-engine finds the index of one of our entries.
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

#[derive(Default)]
struct Directory {
    kv: HashMap<String, u64>,
    logs: HashMap<(String, String), u64>,
}

/// Counters of the writer, for `pyagent stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Calls of [`Store::write`] that wrote something (one engine write each).
    pub writes: u64,
    /// Of those, the ones that asked for an fsync.
    pub syncs: u64,
    /// Bytes raft-engine wrote (after its own compression of large batches).
    pub bytes: u64,
}

struct WriteState {
    next_id: u64,
    bytes_since_purge: usize,
    stats: WriteStats,
}

/// The engine behind a `StorageHandle`. Writes are serialized among themselves; reads run beside a
/// write and see every write that has returned (whether they see the one in flight is not defined).
pub struct Store {
    engine: Arc<Engine>,
    blocks: BlockReader,
    directory: RwLock<Directory>,
    writer: Mutex<WriteState>,
    failed: AtomicBool,
}

impl Store {
    /// Open (or create) the store in `dir`, recovering what the last process wrote. A torn tail of the
    /// newest file (a write cut by a crash) is dropped; any other damage is an error.
    pub fn open(dir: &str) -> Result<Store> {
        let config = Config {
            dir: dir.to_owned(),
            target_file_size: ReadableSize(TARGET_FILE_SIZE_BYTES),
            purge_threshold: ReadableSize(PURGE_THRESHOLD_BYTES),
            ..Config::default()
        };
        let engine = guard("open", || {
            Engine::open(config).map_err(|error| engine_error("open", &error))
        })?;
        let mut directory = Directory::default();
        let mut next_id = FIRST_DATA_REGION;
        let mut bad = None;
        engine
            .scan_raw_messages(DIRECTORY_REGION, None, None, false, |key, value| {
                match decode_directory_record(key, value) {
                    Some(Record::NextId(id)) => next_id = id,
                    Some(Record::Kv(component, id)) => {
                        directory.kv.insert(component, id);
                    }
                    Some(Record::Log(component, log, id)) => {
                        directory.logs.insert((component, log), id);
                    }
                    None => bad = Some(key.to_vec()),
                }
                bad.is_none()
            })
            .map_err(|error| engine_error("read the directory", &error))?;
        if let Some(key) = bad {
            return Err(StoreError::Engine(format!(
                "a directory record that is not ours: {key:?}"
            )));
        }
        for ((component, log), id) in &directory.logs {
            if engine.first_index(*id).is_none() || *id >= next_id {
                return Err(StoreError::Engine(format!(
                    "the directory names region {id} for log {log:?} of {component:?}, which holds no \
                     entry or is not below the next id {next_id}"
                )));
            }
        }
        let engine = Arc::new(engine);
        let blocks = BlockReader::start(Arc::clone(&engine))?;
        Ok(Store {
            engine,
            blocks,
            directory: RwLock::new(directory),
            writer: Mutex::new(WriteState {
                next_id,
                bytes_since_purge: 0,
                stats: WriteStats::default(),
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// True when no component holds a key or a log entry (what `Started(recovered=...)` reports).
    pub fn is_empty(&self) -> bool {
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        directory.logs.is_empty()
            && directory.kv.values().all(|id| {
                let mut any = false;
                let _ = self
                    .engine
                    .scan_raw_messages(*id, None, None, false, |_, _| {
                        any = true;
                        false
                    });
                !any
            })
    }

    pub fn stats(&self) -> WriteStats {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// Apply `batches` in order, atomically, with one engine write (and one fsync when `sync`).
    /// Returns the bytes written. Every batch is checked before anything is written: an invalid one
    /// fails the whole call with [`StoreError::Invalid`] and leaves the store as it was.
    pub fn write(&self, batches: &[BatchSpec], sync: bool) -> Result<usize> {
        self.check_alive()?;
        let mut state = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = Plan::default();
        for batch in batches {
            self.plan_batch(&mut plan, batch)?;
        }
        let mut log_batch = LogBatch::default();
        let mut next_id = state.next_id;
        let changes = self.emit(&plan, &mut log_batch, &mut next_id)?;
        if next_id != state.next_id {
            put_raw(
                &mut log_batch,
                DIRECTORY_REGION,
                DIR_NEXT_ID.to_vec(),
                next_id.to_be_bytes().to_vec(),
            )?;
        }
        if log_batch.is_empty() {
            return Ok(0);
        }
        let written = self.fatal("write", || {
            self.engine
                .write(&mut log_batch, sync)
                .map_err(|error| engine_error("write", &error))
        })?;
        state.next_id = next_id;
        state.stats.writes += 1;
        state.stats.syncs += u64::from(sync);
        state.stats.bytes += written as u64;
        {
            let mut directory = self.directory.write().unwrap_or_else(|e| e.into_inner());
            for change in changes {
                match change {
                    DirChange::Kv(component, id) => {
                        directory.kv.insert(component, id);
                    }
                    DirChange::Log(name, Some(id)) => {
                        directory.logs.insert(name, id);
                    }
                    DirChange::Log(name, None) => {
                        directory.logs.remove(&name);
                    }
                }
            }
        }
        state.bytes_since_purge += written;
        if state.bytes_since_purge >= PURGE_EVERY_BYTES {
            state.bytes_since_purge = 0;
            // The regions it returns hold back purging with old entries; compacting them is their
            // owner's decision (a Raft group compacts after a snapshot), not the store's.
            self.fatal("purge", || {
                self.blocks.run(|engine| {
                    engine
                        .purge_expired_files()
                        .map_err(|error| engine_error("purge", &error))
                })
            })?;
        }
        Ok(written)
    }

    pub fn get(&self, component: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_alive()?;
        let Some(region) = self.kv_region(component) else {
            return Ok(None);
        };
        Ok(self.engine.get(region, &stored_key(key)))
    }

    /// Up to `limit` pairs with `start <= key < end` (no upper bound when `end` is None), in key order.
    pub fn scan(
        &self,
        component: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.check_alive()?;
        let mut pairs = Vec::new();
        let Some(region) = self.kv_region(component) else {
            return Ok(pairs);
        };
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(pairs);
        }
        let (lower, upper) = stored_range(start, end);
        self.engine
            .scan_raw_messages(region, Some(&lower), Some(&upper), false, |key, value| {
                pairs.push((key[1..].to_vec(), value.to_vec()));
                pairs.len() < limit
            })
            .map_err(|error| engine_error("scan", &error))?;
        Ok(pairs)
    }

    /// `(first_index, last_index)` of a log, or None when it holds no entry.
    pub fn log_bounds(&self, component: &str, log: &str) -> Result<Option<(u64, u64)>> {
        self.check_alive()?;
        Ok(self
            .log_region(component, log)
            .and_then(|region| self.region_bounds(region)))
    }

    /// The entries at `lo <= i < hi`; every one must be held ([`StoreError::OutOfRange`] otherwise).
    pub fn log_entries(
        &self,
        component: &str,
        log: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Vec<u8>>> {
        self.check_alive()?;
        if hi <= lo {
            return Ok(Vec::new());
        }
        let region = self.log_region(component, log);
        let bounds = region.and_then(|region| self.region_bounds(region));
        let (Some(region), Some((first, last))) = (region, bounds) else {
            return Err(out_of_range(component, log, lo, hi, None));
        };
        if lo < first || hi - 1 > last {
            return Err(out_of_range(component, log, lo, hi, Some((first, last))));
        }
        let entries = self.blocks.run(move |engine| {
            let mut entries = Vec::with_capacity((hi - lo) as usize);
            engine
                .fetch_entries_to::<EntryExt>(region, lo, hi, None, &mut entries)
                .map_err(|error| engine_error("read log entries", &error))?;
            Ok(entries)
        })?;
        if entries.len() as u64 != hi - lo {
            // A write raced this read and compacted or truncated the log.
            return Err(out_of_range(
                component,
                log,
                lo,
                hi,
                self.region_bounds(region),
            ));
        }
        Ok(entries
            .into_iter()
            .map(|entry| entry.data.to_vec())
            .collect())
    }

    fn check_alive(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Engine(
                "the store failed earlier and refuses every call; restart to recover".into(),
            ));
        }
        Ok(())
    }

    /// Run an engine call whose failure leaves the store in an unknown state: mark it failed.
    fn fatal<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = guard(what, f);
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    fn kv_region(&self, component: &str) -> Option<u64> {
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        directory.kv.get(component).copied()
    }

    fn log_region(&self, component: &str, log: &str) -> Option<u64> {
        let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
        directory
            .logs
            .get(&(component.to_owned(), log.to_owned()))
            .copied()
    }

    fn region_bounds(&self, region: u64) -> Option<(u64, u64)> {
        Some((
            self.engine.first_index(region)?,
            self.engine.last_index(region)?,
        ))
    }

    fn plan_batch<'a>(&self, plan: &mut Plan<'a>, batch: &'a BatchSpec) -> Result<()> {
        let component = batch.component.as_str();
        for op in &batch.ops {
            match op {
                Op::Put { key, value } => {
                    let kv = self.kv_plan(plan, component);
                    kv.changes
                        .insert(Cow::Borrowed(key.as_slice()), Some(value.as_slice()));
                }
                Op::Delete { key } => {
                    let kv = self.kv_plan(plan, component);
                    kv.changes.insert(Cow::Borrowed(key.as_slice()), None);
                }
                Op::DeleteRange { start, end } => {
                    if start >= end {
                        continue;
                    }
                    let kv = self.kv_plan(plan, component);
                    // raft-engine has no range delete: delete each key the range holds, stored ones
                    // and ones put earlier in this call, in the same batch.
                    let mut stored = Vec::new();
                    if let Some(region) = kv.region {
                        let (lower, upper) = stored_range(start, Some(end));
                        self.engine
                            .scan_raw_messages(
                                region,
                                Some(&lower),
                                Some(&upper),
                                false,
                                |key, _| {
                                    stored.push(key[1..].to_vec());
                                    true
                                },
                            )
                            .map_err(|error| engine_error("scan", &error))?;
                    }
                    let range = (
                        Bound::Included(start.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    );
                    for (_, value) in kv.changes.range_mut::<[u8], _>(range) {
                        *value = None;
                    }
                    for key in stored {
                        kv.changes.insert(Cow::Owned(key), None);
                    }
                }
                Op::LogAppend {
                    log,
                    first_index,
                    entries,
                } => {
                    check_index(component, log, *first_index)?;
                    let plan = self.log_plan(plan, component, log);
                    plan.append(component, log, *first_index, entries)?;
                }
                Op::LogTruncate { log, from_index } => {
                    check_index(component, log, *from_index)?;
                    self.log_plan(plan, component, log).truncate(*from_index);
                }
                Op::LogCompact { log, to_index } => {
                    check_index(component, log, *to_index)?;
                    self.log_plan(plan, component, log).compact(*to_index);
                }
            }
        }
        Ok(())
    }

    fn kv_plan<'a, 'p>(&self, plan: &'p mut Plan<'a>, component: &'a str) -> &'p mut KvPlan<'a> {
        plan.kv.entry(component).or_insert_with(|| KvPlan {
            region: self.kv_region(component),
            ..KvPlan::default()
        })
    }

    fn log_plan<'a, 'p>(
        &self,
        plan: &'p mut Plan<'a>,
        component: &'a str,
        log: &'a str,
    ) -> &'p mut LogPlan<'a> {
        plan.logs.entry((component, log)).or_insert_with(|| {
            let region = self.log_region(component, log);
            let base = region.and_then(|region| self.region_bounds(region));
            LogPlan {
                region,
                base,
                emptied: false,
                span: base,
                fresh_from: 0,
                fresh: Vec::new(),
            }
        })
    }

    /// Turn the net effect of a plan into raft-engine items; returns the directory changes to make
    /// once the write has landed.
    fn emit(
        &self,
        plan: &Plan<'_>,
        batch: &mut LogBatch,
        next_id: &mut u64,
    ) -> Result<Vec<DirChange>> {
        let mut changes = Vec::new();
        for (component, kv) in &plan.kv {
            let mut region = kv.region;
            for (key, value) in &kv.changes {
                match value {
                    Some(value) => {
                        let id = match region {
                            Some(id) => id,
                            None => {
                                let id = allocate(next_id);
                                put_raw(
                                    batch,
                                    DIRECTORY_REGION,
                                    kv_record_key(component),
                                    id.to_be_bytes().to_vec(),
                                )?;
                                changes.push(DirChange::Kv((*component).to_owned(), id));
                                region = Some(id);
                                id
                            }
                        };
                        put_raw(batch, id, stored_key(key), value.to_vec())?;
                    }
                    None => {
                        // A delete of a key that is not there costs a few bytes and is a no-op.
                        if let Some(id) = kv.region {
                            batch.delete(id, stored_key(key));
                        }
                    }
                }
            }
        }
        for ((component, log), plan) in &plan.logs {
            let name = ((*component).to_owned(), (*log).to_owned());
            // The region keeps its entries while at least one of them stays in the log; else (a new
            // log, one emptied by this call, or one whose every old entry was compacted away, which
            // would leave a hole before the fresh ones) the log moves to a new region.
            let keeps = plan
                .span
                .zip(plan.base)
                .is_some_and(|((first, _), (_, base_last))| first <= base_last);
            match (plan.region, plan.base, plan.emptied || !keeps) {
                (Some(region), Some((base_first, base_last)), false) => {
                    let (first, last) = plan.span.expect("a log only empties through `emptied`");
                    if !plan.fresh.is_empty() {
                        add_entries(batch, region, plan.fresh_from, &plan.fresh)?;
                    } else if last < base_last {
                        // raft-engine truncates only by overwriting: append the new last entry again.
                        let entry = self
                            .blocks
                            .run(move |engine| {
                                engine
                                    .get_entry::<EntryExt>(region, last)
                                    .map_err(|error| engine_error("read a log entry", &error))
                            })?
                            .ok_or_else(|| {
                                StoreError::Engine(format!(
                                    "entry {last} of region {region} vanished"
                                ))
                            })?;
                        add_entries(batch, region, last, &[entry.data.as_ref()])?;
                    }
                    if first > base_first {
                        batch.add_command(region, Command::Compact { index: first });
                    }
                }
                _ => {
                    if let Some(region) = plan.region {
                        batch.add_command(region, Command::Clean);
                        batch.delete(DIRECTORY_REGION, log_record_key(component, log));
                        changes.push(DirChange::Log(name.clone(), None));
                    }
                    if let Some((first, last)) = plan.span {
                        if first != plan.fresh_from || last - first + 1 != plan.fresh.len() as u64 {
                            // A bug in the planning above: refuse to write what it would get wrong.
                            return Err(StoreError::Engine(format!(
                                "internal: log {log:?} of {component:?} spans {first}..={last} but \
                                 {} fresh entries start at {}",
                                plan.fresh.len(),
                                plan.fresh_from
                            )));
                        }
                        let id = allocate(next_id);
                        put_raw(
                            batch,
                            DIRECTORY_REGION,
                            log_record_key(component, log),
                            id.to_be_bytes().to_vec(),
                        )?;
                        add_entries(batch, id, first, &plan.fresh)?;
                        changes.push(DirChange::Log(name, Some(id)));
                    }
                }
            }
        }
        Ok(changes)
    }
}

type Job = Box<dyn FnOnce(&Engine) + Send>;

/// The one thread on which this store reads log entries from files (reads, and the rewrites of
/// purging). raft-engine caches the last block it read in a THREAD-LOCAL keyed by (file number,
/// offset, length) only, not by engine: a thread that read from another store of this process (or
/// an earlier instance on the same directory) may be handed that store's block for ours. Found by
/// the semantics test, which opens many stores in one thread: an entry came back from the wrong
/// store. A thread of our own keeps that cache to one store instance.
struct BlockReader {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BlockReader {
    fn start(engine: Arc<Engine>) -> Result<BlockReader> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name("pyagent-store-reader".into())
            .spawn(move || {
                for job in queue {
                    job(&engine);
                }
            })
            .map_err(|error| StoreError::Engine(format!("start the reader thread: {error}")))?;
        Ok(BlockReader {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Run `f` on the reader thread and wait for its result; a panic in it becomes an error.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |engine| {
            let _ = reply.send(guard("read", || f(engine)));
        });
        let gone = || StoreError::Engine("the reader thread is gone".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for BlockReader {
    fn drop(&mut self) {
        // Closing the queue ends the thread; joining it releases its share of the engine, so the
        // engine (and its directory lock) is gone when the store is.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one write call does, folded per key space and per log.
#[derive(Default)]
struct Plan<'a> {
    kv: BTreeMap<&'a str, KvPlan<'a>>,
    logs: BTreeMap<(&'a str, &'a str), LogPlan<'a>>,
}

#[derive(Default)]
struct KvPlan<'a> {
    region: Option<u64>,
    /// Final value of each key the call touched: Some = put, None = delete. Keys found by a range
    /// delete come from the engine, so they are owned.
    changes: BTreeMap<Cow<'a, [u8]>, Option<&'a [u8]>>,
}

/// A log through one write call. Entries below `fresh_from` (while not `emptied`) are the ones the
/// region already holds; `fresh` are the entries this call wrote, at `fresh_from, fresh_from + 1, ...`.
struct LogPlan<'a> {
    region: Option<u64>,
    base: Option<(u64, u64)>,
    /// The log held no entry at some point of the call: every entry it ends with is fresh.
    emptied: bool,
    span: Option<(u64, u64)>,
    fresh_from: u64,
    fresh: Vec<&'a [u8]>,
}

impl<'a> LogPlan<'a> {
    fn append(
        &mut self,
        component: &str,
        log: &str,
        first: u64,
        entries: &'a [Vec<u8>],
    ) -> Result<()> {
        if let Some((lo, hi)) = self.span {
            if first > hi + 1 {
                return Err(StoreError::Invalid(format!(
                    "{component}: append at {first} to {log:?} leaves a hole after {hi}"
                )));
            }
            if first < lo {
                return Err(StoreError::Invalid(format!(
                    "{component}: append at {first} to {log:?} is below its first index {lo}"
                )));
            }
        }
        if entries.is_empty() {
            // What the in-memory engine does with an empty append: cut the log at `first`.
            self.truncate(first);
            return Ok(());
        }
        let last = first + entries.len() as u64 - 1;
        match self.span {
            None => {
                self.emptied = true;
                self.span = Some((first, last));
                self.fresh_from = first;
                self.fresh = entries.iter().map(Vec::as_slice).collect();
            }
            Some((lo, _)) => {
                if !self.fresh.is_empty() && first >= self.fresh_from {
                    self.fresh.truncate((first - self.fresh_from) as usize);
                } else {
                    self.fresh_from = first;
                    self.fresh.clear();
                }
                self.fresh.extend(entries.iter().map(Vec::as_slice));
                self.span = Some((lo, last));
            }
        }
        Ok(())
    }

    fn truncate(&mut self, from: u64) {
        let Some((lo, hi)) = self.span else { return };
        if from <= lo {
            self.clear();
        } else if from <= hi {
            self.span = Some((lo, from - 1));
            if from > self.fresh_from {
                self.fresh.truncate((from - self.fresh_from) as usize);
            } else {
                self.fresh.clear();
            }
        }
    }

    fn compact(&mut self, to: u64) {
        let Some((lo, hi)) = self.span else { return };
        if to <= lo {
            return;
        }
        if to > hi {
            self.clear();
            return;
        }
        self.span = Some((to, hi));
        if !self.fresh.is_empty() && to > self.fresh_from {
            self.fresh.drain(..(to - self.fresh_from) as usize);
            self.fresh_from = to;
        }
    }

    fn clear(&mut self) {
        self.emptied = true;
        self.span = None;
        self.fresh.clear();
    }
}

enum DirChange {
    Kv(String, u64),
    Log((String, String), Option<u64>),
}

enum Record {
    NextId(u64),
    Kv(String, u64),
    Log(String, String, u64),
}

fn decode_directory_record(key: &[u8], value: &[u8]) -> Option<Record> {
    let id = u64::from_be_bytes(value.try_into().ok()?);
    match key.split_first()? {
        (b'n', []) => Some(Record::NextId(id)),
        (&DIR_KV, component) => Some(Record::Kv(String::from_utf8(component.to_vec()).ok()?, id)),
        (&DIR_LOG, rest) => {
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            if rest.len() < len {
                return None;
            }
            let (component, log) = rest.split_at(len);
            Some(Record::Log(
                String::from_utf8(component.to_vec()).ok()?,
                String::from_utf8(log.to_vec()).ok()?,
                id,
            ))
        }
        _ => None,
    }
}

fn kv_record_key(component: &str) -> Vec<u8> {
    let mut key = vec![DIR_KV];
    key.extend_from_slice(component.as_bytes());
    key
}

fn log_record_key(component: &str, log: &str) -> Vec<u8> {
    let mut key = vec![DIR_LOG];
    key.extend_from_slice(&(component.len() as u32).to_be_bytes());
    key.extend_from_slice(component.as_bytes());
    key.extend_from_slice(log.as_bytes());
    key
}

fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(VALUE_PREFIX);
    stored.extend_from_slice(key);
    stored
}

fn stored_range(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let upper = match end {
        Some(end) => stored_key(end),
        None => vec![VALUE_PREFIX + 1],
    };
    (stored_key(start), upper)
}

fn allocate(next_id: &mut u64) -> u64 {
    let id = *next_id;
    *next_id += 1;
    id
}

fn put_raw(batch: &mut LogBatch, region: u64, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
    batch
        .put(region, key, value)
        .map_err(|error| StoreError::Invalid(format!("a key the engine refuses: {error}")))
}

fn add_entries(batch: &mut LogBatch, region: u64, first: u64, data: &[&[u8]]) -> Result<()> {
    let entries: Vec<Entry> = data
        .iter()
        .enumerate()
        .map(|(offset, data)| {
            let mut entry = Entry::new();
            entry.index = first + offset as u64;
            entry.data = bytes::Bytes::copy_from_slice(data);
            entry
        })
        .collect();
    batch
        .add_entries::<EntryExt>(region, &entries)
        .map_err(|error| match error {
            raft_engine::Error::Full => {
                StoreError::Invalid("one write of more than 2 GiB of log entries".into())
            }
            error => engine_error("encode log entries", &error),
        })
}

fn check_index(component: &str, log: &str, index: u64) -> Result<()> {
    if index == 0 {
        return Err(StoreError::Invalid(format!(
            "{component}: log index 0 of {log:?} (indexes start at 1)"
        )));
    }
    Ok(())
}

fn out_of_range(
    component: &str,
    log: &str,
    lo: u64,
    hi: u64,
    bounds: Option<(u64, u64)>,
) -> StoreError {
    StoreError::OutOfRange(format!(
        "{component}: entries {lo}..{hi} of {log:?} are not all held ({bounds:?})"
    ))
}

fn engine_error(what: &str, error: &raft_engine::Error) -> StoreError {
    StoreError::Engine(format!("{what}: {error}"))
}

/// raft-engine panics where it cannot go on (a failed fsync, a broken invariant): turn that into an
/// error the caller must handle, never an unwinding through the binding.
fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(StoreError::Engine(format!(
                "{what}: the engine panicked: {message}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "pyagent-storage-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn append(log: &str, first_index: u64, entries: &[&[u8]]) -> Op {
        Op::LogAppend {
            log: log.into(),
            first_index,
            entries: entries.iter().map(|e| e.to_vec()).collect(),
        }
    }

    fn batch(component: &str, ops: Vec<Op>) -> BatchSpec {
        BatchSpec {
            component: component.into(),
            ops,
        }
    }

    fn entries(store: &Store, component: &str, log: &str) -> Vec<Vec<u8>> {
        match store.log_bounds(component, log).unwrap() {
            None => Vec::new(),
            Some((first, last)) => store.log_entries(component, log, first, last + 1).unwrap(),
        }
    }

    fn all_keys(store: &Store, component: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.scan(component, b"", None, usize::MAX).unwrap()
    }

    #[test]
    fn keys_put_delete_range_scan() {
        let dir = TempDir::new("keys");
        let store = Store::open(dir.path()).unwrap();
        assert!(store.is_empty());
        store
            .write(
                &[batch(
                    "a",
                    vec![
                        put(b"k1", b"1"),
                        put(b"k2", b"2"),
                        put(b"k3", b"3"),
                        put(b"__x", b"internal"),
                    ],
                )],
                true,
            )
            .unwrap();
        assert!(!store.is_empty());
        assert_eq!(store.get("a", b"k2").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get("b", b"k2").unwrap(), None, "namespaces are apart");
        assert_eq!(store.get("a", b"__x").unwrap(), Some(b"internal".to_vec()));
        // A range delete sees stored keys and keys put earlier in the same call, not later ones.
        store
            .write(
                &[
                    batch("a", vec![put(b"k25", b"x")]),
                    batch(
                        "a",
                        vec![
                            Op::DeleteRange {
                                start: b"k2".to_vec(),
                                end: b"k3".to_vec(),
                            },
                            put(b"k2", b"again"),
                            Op::Delete {
                                key: b"k1".to_vec(),
                            },
                            Op::Delete {
                                key: b"missing".to_vec(),
                            },
                        ],
                    ),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            all_keys(&store, "a"),
            vec![
                (b"__x".to_vec(), b"internal".to_vec()),
                (b"k2".to_vec(), b"again".to_vec()),
                (b"k3".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(
            store.scan("a", b"k", Some(b"k3"), 10).unwrap(),
            vec![(b"k2".to_vec(), b"again".to_vec())]
        );
        assert_eq!(store.scan("a", b"", None, 1).unwrap().len(), 1);
        assert_eq!(store.scan("a", b"", None, 0).unwrap(), vec![]);
        assert_eq!(store.scan("a", b"k3", Some(b"k2"), 10).unwrap(), vec![]);
        // An empty or inverted range deletes nothing.
        store
            .write(
                &[batch(
                    "a",
                    vec![Op::DeleteRange {
                        start: b"z".to_vec(),
                        end: b"a".to_vec(),
                    }],
                )],
                true,
            )
            .unwrap();
        assert_eq!(all_keys(&store, "a").len(), 3);
        store
            .write(
                &[batch(
                    "a",
                    vec![Op::DeleteRange {
                        start: b"".to_vec(),
                        end: b"\xff".to_vec(),
                    }],
                )],
                true,
            )
            .unwrap();
        assert!(store.is_empty());
    }

    #[test]
    fn log_append_overwrite_truncate_compact() {
        let dir = TempDir::new("logs");
        let store = Store::open(dir.path()).unwrap();
        store
            .write(
                &[batch("r", vec![append("g", 1, &[b"a", b"b", b"c", b"d"])])],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((1, 4)));
        assert_eq!(store.log_bounds("r", "other").unwrap(), None);
        // An overwrite drops the tail after the new last entry.
        store
            .write(&[batch("r", vec![append("g", 2, &[b"B"])])], true)
            .unwrap();
        assert_eq!(
            entries(&store, "r", "g"),
            vec![b"a".to_vec(), b"B".to_vec()]
        );
        // Appending at last + 1 extends; then truncate without an append.
        store
            .write(
                &[batch("r", vec![append("g", 3, &[b"c", b"d", b"e"])])],
                true,
            )
            .unwrap();
        store
            .write(
                &[batch(
                    "r",
                    vec![Op::LogTruncate {
                        log: "g".into(),
                        from_index: 4,
                    }],
                )],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((1, 3)));
        // Compact, then read the rest.
        store
            .write(
                &[batch(
                    "r",
                    vec![Op::LogCompact {
                        log: "g".into(),
                        to_index: 3,
                    }],
                )],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((3, 3)));
        assert_eq!(
            store.log_entries("r", "g", 3, 4).unwrap(),
            vec![b"c".to_vec()]
        );
        assert_eq!(
            store.log_entries("r", "g", 3, 3).unwrap(),
            Vec::<Vec<u8>>::new()
        );
        assert!(matches!(
            store.log_entries("r", "g", 2, 4),
            Err(StoreError::OutOfRange(_))
        ));
        assert!(matches!(
            store.log_entries("r", "g", 3, 5),
            Err(StoreError::OutOfRange(_))
        ));
        assert!(matches!(
            store.log_entries("r", "none", 1, 2),
            Err(StoreError::OutOfRange(_))
        ));
        // A hole and an append below the first index are refused.
        assert!(matches!(
            store.write(&[batch("r", vec![append("g", 5, &[b"x"])])], true),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.write(&[batch("r", vec![append("g", 2, &[b"x"])])], true),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.write(&[batch("r", vec![append("g", 0, &[b"x"])])], true),
            Err(StoreError::Invalid(_))
        ));
        // Compacting past the end empties the log; it may then start anywhere, even lower.
        store
            .write(
                &[batch(
                    "r",
                    vec![Op::LogCompact {
                        log: "g".into(),
                        to_index: 100,
                    }],
                )],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), None);
        assert!(store.is_empty());
        store
            .write(&[batch("r", vec![append("g", 50, &[b"p", b"q"])])], true)
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((50, 51)));
        store
            .write(
                &[batch(
                    "r",
                    vec![
                        Op::LogTruncate {
                            log: "g".into(),
                            from_index: 50,
                        },
                        append("g", 7, &[b"s"]),
                    ],
                )],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((7, 7)));
        assert_eq!(entries(&store, "r", "g"), vec![b"s".to_vec()]);
        // Within one call, ops see the ones before them.
        store
            .write(
                &[batch(
                    "r",
                    vec![
                        append("g", 8, &[b"t", b"u", b"v"]),
                        Op::LogTruncate {
                            log: "g".into(),
                            from_index: 9,
                        },
                        append("g", 9, &[b"U"]),
                        Op::LogCompact {
                            log: "g".into(),
                            to_index: 8,
                        },
                    ],
                )],
                true,
            )
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((8, 9)));
        assert_eq!(
            entries(&store, "r", "g"),
            vec![b"t".to_vec(), b"U".to_vec()]
        );
        // An append after a truncate in the same call is checked against the truncated log.
        assert!(matches!(
            store.write(
                &[batch(
                    "r",
                    vec![
                        Op::LogTruncate {
                            log: "g".into(),
                            from_index: 9
                        },
                        append("g", 10, &[b"x"])
                    ]
                )],
                true
            ),
            Err(StoreError::Invalid(_))
        ));
        // Appended and compacted in one call past every entry the region held: no hole in the engine.
        store
            .write(
                &[batch(
                    "r",
                    vec![
                        append("g", 9, &[b"w", b"x", b"y"]),
                        Op::LogCompact {
                            log: "g".into(),
                            to_index: 11,
                        },
                    ],
                )],
                true,
            )
            .unwrap();
        assert_eq!(entries(&store, "r", "g"), vec![b"y".to_vec()]);
        store
            .write(&[batch("r", vec![append("g", 12, &[b"z"])])], true)
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((11, 12)));
        store
            .write(&[batch("r", vec![append("g", 12, &[b"Z"])])], true)
            .unwrap();
        // An empty append cuts the log at its index (what memstore does).
        store
            .write(&[batch("r", vec![append("g", 12, &[])])], true)
            .unwrap();
        assert_eq!(store.log_bounds("r", "g").unwrap(), Some((11, 11)));
    }

    #[test]
    fn a_failing_batch_leaves_nothing() {
        let dir = TempDir::new("atomic");
        let store = Store::open(dir.path()).unwrap();
        store
            .write(&[batch("a", vec![append("g", 1, &[b"1"])])], true)
            .unwrap();
        let result = store.write(
            &[
                batch("a", vec![put(b"k", b"v"), append("g", 2, &[b"2"])]),
                batch("b", vec![put(b"k", b"v"), append("h", 1, &[b"x"])]),
                batch("a", vec![append("g", 9, &[b"hole"])]),
            ],
            true,
        );
        assert!(
            matches!(result, Err(StoreError::Invalid(ref m)) if m.contains("hole")),
            "{result:?}"
        );
        assert_eq!(store.get("a", b"k").unwrap(), None);
        assert_eq!(store.get("b", b"k").unwrap(), None);
        assert_eq!(store.log_bounds("a", "g").unwrap(), Some((1, 1)));
        assert_eq!(store.log_bounds("b", "h").unwrap(), None);
        assert_eq!(store.stats().writes, 1);
        // The store still works after refusing a batch.
        store
            .write(&[batch("a", vec![append("g", 2, &[b"2"])])], true)
            .unwrap();
        assert_eq!(store.log_bounds("a", "g").unwrap(), Some((1, 2)));
    }

    #[test]
    fn many_batches_make_one_write() {
        let dir = TempDir::new("group");
        let store = Store::open(dir.path()).unwrap();
        let batches: Vec<BatchSpec> = (0..100u64)
            .map(|i| {
                batch(
                    &format!("c{}", i % 7),
                    vec![
                        put(&i.to_be_bytes(), b"v"),
                        append("log", i / 7 + 1, &[b"e"]),
                    ],
                )
            })
            .collect();
        store.write(&batches, true).unwrap();
        assert_eq!(store.stats().writes, 1);
        assert_eq!(store.stats().syncs, 1);
        assert_eq!(store.log_bounds("c0", "log").unwrap(), Some((1, 15)));
        assert_eq!(all_keys(&store, "c3").len(), 14);
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = TempDir::new("reopen");
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(
                    &[batch(
                        "a",
                        vec![
                            put(b"k", b"v"),
                            append("g", 3, &[b"x", b"y"]),
                            append("h", 1, &[b"z"]),
                        ],
                    )],
                    true,
                )
                .unwrap();
            // Empty "h" and start it again: it moves to a new region, and the old one is cleaned.
            store
                .write(
                    &[batch(
                        "a",
                        vec![Op::LogTruncate {
                            log: "h".into(),
                            from_index: 1,
                        }],
                    )],
                    true,
                )
                .unwrap();
            store
                .write(&[batch("a", vec![append("h", 10, &[b"w"])])], false)
                .unwrap();
            store
                .write(
                    &[batch(
                        "b",
                        vec![Op::LogCompact {
                            log: "g".into(),
                            to_index: 2,
                        }],
                    )],
                    true,
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.is_empty());
        assert_eq!(store.get("a", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            entries(&store, "a", "g"),
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        assert_eq!(store.log_bounds("a", "g").unwrap(), Some((3, 4)));
        assert_eq!(store.log_bounds("a", "h").unwrap(), Some((10, 10)));
        // New ids after a restart do not collide with the old ones.
        store
            .write(
                &[
                    batch("c", vec![append("g", 1, &[b"c"])]),
                    batch("d", vec![put(b"k", b"d")]),
                ],
                true,
            )
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(entries(&store, "a", "h"), vec![b"w".to_vec()]);
        assert_eq!(entries(&store, "c", "g"), vec![b"c".to_vec()]);
        assert_eq!(store.get("d", b"k").unwrap(), Some(b"d".to_vec()));
        assert_eq!(store.get("a", b"k").unwrap(), Some(b"v".to_vec()));
    }

    fn log_files(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "raftlog"))
            .map(|path| {
                let size = std::fs::metadata(&path).unwrap().len();
                (path, size)
            })
            .collect();
        files.sort();
        files
    }

    fn write_numbered(store: &Store, i: u64) {
        let value = vec![i as u8; 3000];
        store
            .write(
                &[batch(
                    "t",
                    vec![
                        put(&i.to_be_bytes(), &value),
                        append("log", i, &[&value]),
                        put(b"last", &i.to_be_bytes()),
                    ],
                )],
                true,
            )
            .unwrap();
    }

    fn check_numbered(store: &Store, through: u64) {
        for i in 1..=through {
            assert_eq!(
                store.get("t", &i.to_be_bytes()).unwrap(),
                Some(vec![i as u8; 3000]),
                "batch {i}"
            );
        }
        assert_eq!(
            store.get("t", &(through + 1).to_be_bytes()).unwrap(),
            None,
            "batch {} is all or nothing",
            through + 1
        );
        assert_eq!(store.log_bounds("t", "log").unwrap(), Some((1, through)));
        assert_eq!(
            store.get("t", b"last").unwrap(),
            Some(through.to_be_bytes().to_vec())
        );
    }

    /// Write batches 1..=n, close, then write batch n+1 alone and close: returns the file it went
    /// to and the file's size before it.
    fn torn_setup(dir: &TempDir, n: u64) -> (PathBuf, u64) {
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 1..=n {
                write_numbered(&store, i);
            }
        }
        let before = log_files(&dir.0);
        {
            let store = Store::open(dir.path()).unwrap();
            write_numbered(&store, n + 1);
        }
        let after = log_files(&dir.0);
        let (path, size) = after
            .iter()
            .find(|(path, size)| before.iter().all(|(p, s)| p != path || s != size))
            .cloned()
            .expect("the last batch grew or made a file");
        let old = before
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(0, |(_, s)| *s);
        assert!(size > old + 3000);
        (path, old)
    }

    #[test]
    fn a_torn_tail_loses_only_the_torn_batch() {
        let dir = TempDir::new("torn");
        let (path, old) = torn_setup(&dir, 5);
        let size = std::fs::metadata(&path).unwrap().len();
        // Cut the last record in its middle, as a crash during its write would.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let cut = if old == 0 {
            size / 2
        } else {
            old + (size - old) / 2
        };
        file.set_len(cut).unwrap();
        drop(file);
        let store = Store::open(dir.path()).unwrap();
        check_numbered(&store, 5);
        // And the store goes on from there.
        write_numbered(&store, 6);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        check_numbered(&store, 6);
    }

    #[test]
    fn garbage_after_the_last_record_is_dropped() {
        use std::io::Write;
        let dir = TempDir::new("garbage");
        let (path, _) = torn_setup(&dir, 3);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let garbage: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        file.write_all(&garbage).unwrap();
        drop(file);
        let store = Store::open(dir.path()).unwrap();
        check_numbered(&store, 4);
    }

    /// raft-engine caches the last block read per thread, keyed without the engine: two stores
    /// whose files look alike must still each read their own entries.
    #[test]
    fn two_stores_in_one_thread_read_their_own_entries() {
        let (dir_a, dir_b) = (TempDir::new("cache-a"), TempDir::new("cache-b"));
        let a = Store::open(dir_a.path()).unwrap();
        let b = Store::open(dir_b.path()).unwrap();
        a.write(&[batch("c", vec![append("g", 1, &[b"from a"])])], true)
            .unwrap();
        b.write(&[batch("c", vec![append("g", 1, &[b"from b"])])], true)
            .unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.log_entries("c", "g", 1, 2).unwrap(),
                vec![b"from a".to_vec()]
            );
            assert_eq!(
                b.log_entries("c", "g", 1, 2).unwrap(),
                vec![b"from b".to_vec()]
            );
        }
        // And a new instance on the same directory after the old one's thread read it.
        drop(a);
        let mut batches = Vec::new();
        std::fs::remove_dir_all(&dir_a.0).unwrap();
        let a = Store::open(dir_a.path()).unwrap();
        batches.push(batch("c", vec![append("g", 1, &[b"anew a"])]));
        a.write(&batches, true).unwrap();
        assert_eq!(
            a.log_entries("c", "g", 1, 2).unwrap(),
            vec![b"anew a".to_vec()]
        );
    }

    /// Random op sequences against a plain model of the semantics, several batches per call.
    #[test]
    fn random_ops_match_a_model() {
        #[derive(Default, Clone)]
        struct Model {
            keys: BTreeMap<Vec<u8>, Vec<u8>>,
            logs: BTreeMap<String, (u64, Vec<Vec<u8>>)>,
        }
        impl Model {
            fn bounds(&self, log: &str) -> Option<(u64, u64)> {
                let (first, entries) = self.logs.get(log)?;
                if entries.is_empty() {
                    None
                } else {
                    Some((*first, first + entries.len() as u64 - 1))
                }
            }
            fn apply(&mut self, op: &Op) -> bool {
                match op {
                    Op::Put { key, value } => {
                        self.keys.insert(key.clone(), value.clone());
                    }
                    Op::Delete { key } => {
                        self.keys.remove(key);
                    }
                    Op::DeleteRange { start, end } => {
                        self.keys.retain(|k, _| !(k >= start && k < end))
                    }
                    Op::LogAppend {
                        log,
                        first_index,
                        entries,
                    } => {
                        let bounds = self.bounds(log);
                        if let Some((lo, hi)) = bounds {
                            if *first_index > hi + 1 || *first_index < lo {
                                return false;
                            }
                        }
                        let slot = self.logs.entry(log.clone()).or_default();
                        if bounds.is_none() {
                            *slot = (*first_index, Vec::new());
                        }
                        slot.1.truncate((*first_index - slot.0) as usize);
                        slot.1.extend(entries.iter().cloned());
                    }
                    Op::LogTruncate { log, from_index } => {
                        if let Some(slot) = self.logs.get_mut(log) {
                            slot.1.truncate(from_index.saturating_sub(slot.0) as usize);
                        }
                    }
                    Op::LogCompact { log, to_index } => {
                        if let Some(slot) = self.logs.get_mut(log) {
                            if *to_index > slot.0 {
                                let n = ((*to_index - slot.0) as usize).min(slot.1.len());
                                slot.1.drain(..n);
                                slot.0 = *to_index;
                            }
                        }
                    }
                }
                true
            }
        }

        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let dir = TempDir::new("model");
        let mut store = Store::open(dir.path()).unwrap();
        let mut model = Model::default();
        let logs = ["x", "y"];
        for round in 0..3000 {
            let mut trial = model.clone();
            let mut ok = true;
            let mut batches = Vec::new();
            for _ in 0..=next(3) {
                let mut ops = Vec::new();
                for _ in 0..=next(4) {
                    let key = vec![b'a' + next(6) as u8];
                    let log = logs[next(2) as usize].to_string();
                    let last = trial.bounds(&log).map_or(0, |(_, hi)| hi);
                    let op = match next(8) {
                        0 | 1 => put(&key, &[next(255) as u8]),
                        2 => Op::Delete { key },
                        3 => Op::DeleteRange {
                            start: key,
                            end: vec![b'a' + next(7) as u8],
                        },
                        4 | 5 => {
                            let reach = last + 2 + u64::from(next(10) == 0) * 3;
                            let first = 1 + next(reach);
                            let n = 1 + next(3);
                            let entries = (0..n).map(|j| vec![round as u8, j as u8]).collect();
                            Op::LogAppend {
                                log,
                                first_index: first,
                                entries,
                            }
                        }
                        6 => Op::LogTruncate {
                            log,
                            from_index: 1 + next(last + 2),
                        },
                        _ => Op::LogCompact {
                            log,
                            to_index: 1 + next(last + 2),
                        },
                    };
                    ok &= trial.apply(&op);
                    ops.push(op);
                }
                batches.push(batch("c", ops));
            }
            let result = store.write(&batches, next(2) == 0);
            assert_eq!(result.is_ok(), ok, "round {round}: {result:?}");
            if ok {
                model = trial;
            }
            if next(20) == 0 {
                drop(store);
                store = Store::open(dir.path()).unwrap();
            }
            let keys: Vec<_> = model.keys.clone().into_iter().collect();
            assert_eq!(all_keys(&store, "c"), keys, "round {round}");
            for log in logs {
                let want = model.bounds(log);
                assert_eq!(
                    store.log_bounds("c", log).unwrap(),
                    want,
                    "round {round} log {log}"
                );
                if want.is_some() {
                    assert_eq!(
                        entries(&store, "c", log),
                        model.logs[log].1,
                        "round {round} log {log}"
                    );
                }
            }
        }
    }
}
