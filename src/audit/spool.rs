//! The on-disk spool: the write-ahead journal of every decision, and where decisions wait
//! while PostgreSQL is down or slow.
//!
//! A spool directory holds append-only segment files `seg-<seq>.spool`. Each starts with an
//! 8-byte magic and then holds frames `len: u32 LE | crc32(len ‖ payload): u32 LE | payload`,
//! the payload being one decision as a row of PostgreSQL's binary `COPY` format (see
//! [`super::tuple`]; segments of older versions hold the record codec of
//! [`super::record::codec`] instead, and are still read). Writes go to the one active
//! segment, which is created at its full size with every block written (zeros, so a full disk
//! is an error at creation, never a fault later; a background thread prepares the next one
//! ahead, as `seg-<seq>.spare`) and mapped into memory: appending a frame
//! is a copy into the page cache, which outlives a crash of the process just as a `write()`
//! would, without a system call. The active segment is sealed (unmapped, cut to its used length,
//! fsync'd and closed) when the next frame does not fit or when the replayer wants it; a crash
//! leaves its unused tail zeroed, which reads as a clean end. Sealed segments are immutable and are deleted only after their records
//! are committed to PostgreSQL. A torn or corrupt frame ends the reading of its segment with a
//! warning. One spool directory belongs to one process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::MmapMut;

use super::record::{codec, DecisionRecord};
use super::tuple;

const MAGIC: &[u8; 8] = b"CRASPL1\n";
const FRAME_HEADER: usize = 8;
/// Largest payload a frame may claim; anything larger is corruption.
const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

/// Failure modes of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full: {used} + {needed} bytes would exceed the limit of {limit} bytes")]
    Full { used: u64, needed: u64, limit: u64 },
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = SpoolError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Cap on the total size of all segments, in bytes.
    pub max_bytes: u64,
    /// A segment is sealed once it reaches this size.
    pub segment_bytes: u64,
}

struct Active {
    seq: u64,
    path: PathBuf,
    file: File,
    /// The whole file, mapped; `None` once closed.
    map: Option<MmapMut>,
    /// Bytes used: the magic and the frames.
    len: u64,
    /// Size of the file (and of the mapping).
    cap: u64,
}

impl Active {
    /// Copies frames in at the end; the caller has checked that they fit.
    fn put(&mut self, buf: &[u8]) {
        let at = self.len as usize;
        let map = self.map.as_mut().expect("an active segment is mapped");
        map[at..at + buf.len()].copy_from_slice(buf);
        self.len += buf.len() as u64;
    }

    /// Unmaps the segment and cuts the file to the bytes used. Idempotent.
    fn close(&mut self) -> io::Result<()> {
        if self.map.take().is_some() {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot cut a spool segment to its used length (its zeroed tail reads as a clean end)");
        }
    }
}

/// Unmaps and deletes a segment that holds no record.
fn discard(mut a: Active) {
    let _ = a.close();
    let _ = fs::remove_file(&a.path);
}

/// Creates segment file `path` at `cap` bytes, every block written (zeros), so that writes
/// through the mapping find their blocks allocated (no page ever waits for an allocation, and a
/// full disk is an error here, never a fault later), then maps it and writes the magic.
fn prepare_segment(seq: u64, path: PathBuf, cap: u64) -> Result<Active> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let filled = (|| {
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        let mut f = &file;
        let mut left = cap;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        // SAFETY: the file was just created by this process, which alone writes the spool
        // directory ("one spool directory belongs to one process"); its blocks are written,
        // and it is never shortened while mapped (see `Active::close`).
        unsafe { MmapMut::map_mut(&file) }
    })();
    let map = match filled {
        Ok(m) => m,
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(SpoolError::Io { path, source: e });
        }
    };
    let mut active = Active {
        seq,
        path,
        file,
        map: Some(map),
        len: 0,
        cap,
    };
    active.put(MAGIC);
    Ok(active)
}

struct Inner {
    active: Option<Active>,
    /// The next segment, being prepared by a background thread (see [`prepare_segment`]).
    spare: Option<std::sync::mpsc::Receiver<Result<Active>>>,
    next_seq: u64,
    /// Sealed segments by sequence number, with their size.
    sealed: BTreeMap<u64, u64>,
    /// Journaled records per segment still on their way to PostgreSQL (see [`Spool::journal`]).
    pending: HashMap<u64, u64>,
    /// Segments holding records that may not be in PostgreSQL: they must be replayed. Segments
    /// that are neither pending nor dirty hold only committed records and are just deleted.
    dirty: BTreeSet<u64>,
}

/// The spool of one process. Appends are synchronous, short, and safe from any thread.
pub struct Spool {
    cfg: SpoolConfig,
    inner: Mutex<Inner>,
    bytes: AtomicU64,
}

/// The records read back from one sealed segment.
#[derive(Debug)]
pub struct SegmentContents {
    /// The well-formed frames, each holding one row.
    pub frames: Frames,
    /// Bytes at the end of the segment that did not form a valid frame (torn write, corruption).
    pub skipped_bytes: u64,
    /// Frames whose checksum was right but whose payload could not be decoded.
    pub undecodable: u64,
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:020}.spool")
}

/// A segment being prepared ahead, not yet in use.
fn spare_name(seq: u64) -> String {
    format!("seg-{seq:020}.spare")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// Frames `len | crc | row`, back to back, each row one decision in PostgreSQL's binary
/// `COPY` format: what the journal appends, the queue holds, and the writers stream.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    buf: Vec<u8>,
    count: usize,
}

impl Frames {
    pub fn with_capacity(bytes: usize) -> Frames {
        Frames {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// The frames of owned records.
    pub fn of_records(records: &[DecisionRecord]) -> Frames {
        let mut f = Frames::with_capacity(records.len() * 560);
        for r in records {
            f.push(|out| tuple::encode(r, out));
        }
        f
    }

    /// Removes every frame, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Appends one frame whose payload `encode` writes.
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        encode(&mut self.buf);
        let len = ((self.buf.len() - start - FRAME_HEADER) as u32).to_le_bytes();
        let crc = frame_crc(len, &self.buf[start + FRAME_HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&len);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
    }

    /// Appends all of `other`'s frames.
    pub fn extend(&mut self, other: &Frames) {
        self.buf.extend_from_slice(&other.buf);
        self.count += other.count;
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded frames, as written to a segment.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The byte range of each frame (header included).
    fn spans(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let rest = self.buf.get(pos..).filter(|r| r.len() >= FRAME_HEADER)?;
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let span = pos..pos + FRAME_HEADER + len;
            pos = span.end;
            Some(span)
        })
    }

    /// The payload (row) of each frame.
    pub fn rows(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans()
            .map(|r| &self.buf[r.start + FRAME_HEADER..r.end])
    }

    /// Splits into runs of at most `n` frames.
    pub fn chunks(&self, n: usize) -> Vec<Frames> {
        let mut out = Vec::new();
        let mut cur = Frames::default();
        for span in self.spans() {
            if cur.count == n.max(1) {
                out.push(std::mem::take(&mut cur));
            }
            cur.buf.extend_from_slice(&self.buf[span]);
            cur.count += 1;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// The body of one binary `COPY` holding every row.
    pub fn copy_body(&self) -> Vec<u8> {
        tuple::copy_body(self.rows(), self.buf.len())
    }

    /// The records, decoded (for tests and inspection; rows that do not decode are skipped).
    pub fn records(&self) -> Vec<DecisionRecord> {
        self.rows().filter_map(|r| tuple::decode(r).ok()).collect()
    }
}

/// Appends the frame of each record to `out`.
pub fn encode_frames(records: &[DecisionRecord], out: &mut Vec<u8>) {
    out.extend_from_slice(Frames::of_records(records).as_bytes());
}

/// Decodes the frames of a whole segment file, stopping at the first torn or corrupt frame.
/// Frames in the older record codec are converted to rows.
pub fn decode_segment(data: &[u8]) -> SegmentContents {
    let mut out = SegmentContents {
        frames: Frames::with_capacity(data.len()),
        skipped_bytes: 0,
        undecodable: 0,
    };
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        out.skipped_bytes = data.len() as u64;
        return out;
    }
    let mut pos = MAGIC.len();
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < FRAME_HEADER {
            break;
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes);
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 && rest.iter().all(|&b| b == 0) {
            // The unused, zeroed tail of a segment whose process stopped before sealing it.
            return out;
        }
        if len > MAX_PAYLOAD || rest.len() < FRAME_HEADER + len as usize {
            break;
        }
        let frame = &rest[..FRAME_HEADER + len as usize];
        let payload = &frame[FRAME_HEADER..];
        if frame_crc(len_bytes, payload) != crc {
            break;
        }
        // A row starts with its field count (0x00 0x27); the older codec with its version (1).
        let converted = if payload.first() == Some(&1) {
            codec::decode(payload)
                .map(|r| out.frames.push(|b| tuple::encode(&r, b)))
                .map_err(|e| e.to_string())
        } else {
            tuple::check(payload)
                .map(|()| {
                    out.frames.buf.extend_from_slice(frame);
                    out.frames.count += 1;
                })
                .map_err(|e| e.to_string())
        };
        if let Err(e) = converted {
            tracing::warn!(error = %e, "skipping an undecodable spooled record");
            out.undecodable += 1;
        }
        pos += FRAME_HEADER + len as usize;
    }
    out.skipped_bytes = (data.len() - pos) as u64;
    out
}

impl Spool {
    /// Opens (creating if needed) the spool directory; existing segments become sealed
    /// segments, to be replayed.
    pub fn open(cfg: SpoolConfig) -> Result<Spool> {
        fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let mut sealed = BTreeMap::new();
        let mut total = 0;
        for entry in fs::read_dir(&cfg.dir).map_err(io_err(&cfg.dir))? {
            let entry = entry.map_err(io_err(&cfg.dir))?;
            if entry.path().extension().is_some_and(|x| x == "spare") {
                // A segment prepared ahead and never used: it holds no record.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) else {
                continue;
            };
            let len = entry.metadata().map_err(io_err(&entry.path()))?.len();
            total += len;
            sealed.insert(seq, len);
        }
        let next_seq = sealed.keys().next_back().map_or(1, |s| s + 1);
        // Whatever an earlier run left behind is replayed (idempotently).
        let dirty = sealed.keys().copied().collect();
        let spool = Spool {
            cfg,
            inner: Mutex::new(Inner {
                active: None,
                spare: None,
                next_seq,
                sealed,
                pending: HashMap::new(),
                dirty,
            }),
            bytes: AtomicU64::new(total),
        };
        // The first segment is prepared now, so the first decision does not wait for it.
        spool.start_spare(&mut spool.lock());
        Ok(spool)
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Total bytes of all segments on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// True when no segment holds records.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.sealed.is_empty()
            && inner
                .active
                .as_ref()
                .is_none_or(|a| a.len <= MAGIC.len() as u64)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the file state inconsistent in a way
        // the frame checksums do not catch, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records as one write, refusing if the spool would exceed `limit` bytes (at most
    /// the configured cap). With `sync`, the data is fsync'd before returning.
    pub fn append(&self, records: &[DecisionRecord], limit: u64, sync: bool) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.append_frames(Frames::of_records(records).as_bytes(), limit, sync)
    }

    /// Appends pre-encoded frames (see [`encode_frames`]); they will be replayed.
    pub fn append_frames(&self, buf: &[u8], limit: u64, sync: bool) -> Result<()> {
        self.write_frames(buf, limit, sync, None).map(|_| ())
    }

    /// The write-ahead journal: appends the pre-encoded frames of `records` records with a
    /// plain `write()` (no fsync: the page cache survives a process crash; fsync is periodic)
    /// and returns the segment's sequence number. The records count as pending in that segment
    /// until [`Spool::resolve`]; a segment is never deleted while it has pending records.
    pub fn journal(&self, buf: &[u8], records: u64, limit: u64) -> Result<u64> {
        self.write_frames(buf, limit, false, Some(records))
    }

    /// `records` journaled records of segment `seq` are committed to PostgreSQL
    /// (`committed`), or are left to the spool's replay (`!committed`).
    pub fn resolve(&self, seq: u64, records: u64, committed: bool) {
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(&seq) {
            *p = p.saturating_sub(records);
            if *p == 0 {
                inner.pending.remove(&seq);
            }
        }
        if !committed {
            inner.dirty.insert(seq);
        }
    }

    /// Sealed segments without pending records, oldest first, each with whether it must be
    /// replayed (`true`) or holds only committed records and may simply be deleted.
    pub fn settled_segments(&self) -> Vec<(u64, bool)> {
        let inner = self.lock();
        inner
            .sealed
            .keys()
            .filter(|seq| !inner.pending.contains_key(seq))
            .map(|seq| (*seq, inner.dirty.contains(seq)))
            .collect()
    }

    fn write_frames(
        &self,
        buf: &[u8],
        limit: u64,
        sync: bool,
        journaled: Option<u64>,
    ) -> Result<u64> {
        let limit = limit.min(self.cfg.max_bytes);
        let to_sync;
        let seq;
        // fsyncs run after the lock is released: record() must never wait for a disk flush.
        let mut sealed = None;
        let mut created = false;
        {
            let mut inner = self.lock();
            let rotate = inner
                .active
                .as_ref()
                .is_some_and(|a| a.len + buf.len() as u64 > a.cap);
            if rotate
                && inner
                    .active
                    .as_ref()
                    .is_some_and(|a| a.len <= MAGIC.len() as u64)
            {
                // Too small even when empty: replace it with one that fits.
                let mut empty = inner.active.take().expect("checked");
                let _ = empty.close();
                let _ = fs::remove_file(&empty.path);
                self.bytes.fetch_sub(empty.len, Ordering::Relaxed);
            } else if rotate {
                sealed = self.seal_locked(&mut inner);
            }
            let header = if inner.active.is_none() {
                MAGIC.len() as u64
            } else {
                0
            };
            let needed = buf.len() as u64 + header;
            let used = self.bytes();
            if used + needed > limit {
                drop(inner);
                Self::finish_seal(sealed);
                return Err(SpoolError::Full {
                    used,
                    needed,
                    limit,
                });
            }
            if inner.active.is_none() {
                let active = self.create_segment(&mut inner, needed)?;
                inner.active = Some(active);
                created = true;
                self.bytes.fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
            }
            let inner = &mut *inner;
            let active = inner.active.as_mut().expect("just created");
            active.put(buf);
            self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            seq = active.seq;
            match journaled {
                Some(n) => *inner.pending.entry(seq).or_insert(0) += n,
                None => {
                    inner.dirty.insert(seq);
                }
            }
            to_sync = if sync {
                Some((
                    active.path.clone(),
                    active.file.try_clone().map_err(io_err(&active.path))?,
                ))
            } else {
                None
            };
        }
        Self::finish_seal(sealed);
        if created {
            // Make the new directory entry durable so the segment survives a power loss.
            if let Ok(d) = File::open(&self.cfg.dir) {
                let _ = d.sync_all();
            }
        }
        if let Some((path, file)) = to_sync {
            file.sync_data().map_err(io_err(&path))?;
        }
        Ok(seq)
    }

    /// A new active segment with room for at least `needed` bytes: the spare one (waiting for
    /// it if it is not ready yet) if it is big enough, else one created now. Either way the
    /// next spare is started, so that segment creation (writing megabytes of zeros) stays off
    /// the recording path whenever it can keep up.
    fn create_segment(&self, inner: &mut Inner, needed: u64) -> Result<Active> {
        let mut ready = None;
        if let Some(rx) = inner.spare.take() {
            // If it is still being prepared, waiting for it costs less than making another
            // here, and keeps segment numbers in the order segments are written.
            match rx.recv() {
                Ok(Ok(a)) if a.cap >= needed => ready = Some(a),
                Ok(Ok(unfit)) => discard(unfit),
                Ok(Err(e)) => tracing::warn!(error = %e, "preparing a spool segment ahead failed"),
                Err(_) => {}
            }
        }
        // A spare becomes a segment under its final name.
        let ready = ready.and_then(|mut a| {
            let path = self.cfg.dir.join(segment_name(a.seq));
            match fs::rename(&a.path, &path) {
                Ok(()) => {
                    a.path = path;
                    Some(a)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rename a prepared spool segment");
                    discard(a);
                    None
                }
            }
        });
        let active = match ready {
            Some(a) => a,
            None => {
                let (seq, path) = self.reserve_name(inner);
                prepare_segment(seq, path, self.cfg.segment_bytes.max(needed))?
            }
        };
        self.start_spare(inner);
        Ok(active)
    }

    /// Starts preparing the next segment on a background thread.
    fn start_spare(&self, inner: &mut Inner) {
        let (seq, _) = self.reserve_name(inner);
        let path = self.cfg.dir.join(spare_name(seq));
        let cap = self.cfg.segment_bytes;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let started = std::thread::Builder::new()
            .name("cra-spool-prep".into())
            .spawn(move || {
                let _ = tx.send(prepare_segment(seq, path, cap));
            });
        if started.is_ok() {
            inner.spare = Some(rx);
        }
    }

    /// The next free segment number and its path.
    fn reserve_name(&self, inner: &mut Inner) -> (u64, PathBuf) {
        loop {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let path = self.cfg.dir.join(segment_name(seq));
            if !path.exists() {
                return (seq, path);
            }
        }
    }

    /// Moves the active segment to the sealed ones; the caller fsyncs it with
    /// [`Self::finish_seal`] once the lock is released.
    fn seal_locked(&self, inner: &mut Inner) -> Option<Active> {
        let a = inner.active.take()?;
        inner.sealed.insert(a.seq, a.len);
        Some(a)
    }

    fn finish_seal(sealed: Option<Active>) {
        if let Some(mut a) = sealed {
            if let Err(e) = a.close().and_then(|()| a.file.sync_data()) {
                tracing::error!(path = %a.path.display(), error = %e, "fsync of a spool segment failed");
            }
        }
    }

    /// Seals the active segment if it holds records that must be replayed (records spooled
    /// while PostgreSQL was down or failing), so the replayer can take it. A segment whose
    /// records are only journaled stays active until it is full (or shutdown): sealing it early
    /// would only make the next one be prepared sooner.
    pub fn seal_active_if_dirty(&self) {
        let dirty = {
            let inner = self.lock();
            inner
                .active
                .as_ref()
                .is_some_and(|a| inner.dirty.contains(&a.seq))
        };
        if dirty {
            self.seal_active();
        }
    }

    /// Seals the active segment, if it holds any record, so the replayer can take it.
    pub fn seal_active(&self) {
        let mut inner = self.lock();
        let has_records = inner
            .active
            .as_ref()
            .is_some_and(|a| a.len > MAGIC.len() as u64);
        let sealed = if has_records {
            self.seal_locked(&mut inner)
        } else {
            None
        };
        drop(inner);
        Self::finish_seal(sealed);
    }

    /// fsyncs the active segment (used after unsynced single-record appends and at shutdown).
    pub fn sync(&self) -> Result<()> {
        let f = {
            let inner = self.lock();
            match &inner.active {
                Some(a) => Some((a.path.clone(), a.file.try_clone().map_err(io_err(&a.path))?)),
                None => None,
            }
        };
        if let Some((path, file)) = f {
            file.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Sequence numbers of the sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<u64> {
        self.lock().sealed.keys().copied().collect()
    }

    /// Reads a sealed segment back.
    pub fn read_segment(&self, seq: u64) -> Result<SegmentContents> {
        let path = self.cfg.dir.join(segment_name(seq));
        let data = fs::read(&path).map_err(io_err(&path))?;
        let contents = decode_segment(&data);
        if contents.skipped_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                skipped_bytes = contents.skipped_bytes,
                records = contents.frames.len(),
                "spool segment ends with a torn or corrupt record; it is skipped"
            );
        }
        Ok(contents)
    }

    /// Renames a sealed segment that PostgreSQL keeps rejecting to `quarantine-<seq>.spool`,
    /// out of the replay and the size cap, for an operator to inspect. Returns the new path.
    pub fn quarantine_segment(&self, seq: u64) -> Result<PathBuf> {
        let from = self.cfg.dir.join(segment_name(seq));
        let to = self.cfg.dir.join(format!("quarantine-{seq:020}.spool"));
        let mut inner = self.lock();
        fs::rename(&from, &to).map_err(io_err(&from))?;
        if let Some(len) = inner.sealed.remove(&seq) {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        inner.dirty.remove(&seq);
        Ok(to)
    }

    /// Deletes a sealed segment whose records are committed.
    pub fn remove_segment(&self, seq: u64) -> Result<()> {
        let path = self.cfg.dir.join(segment_name(seq));
        let mut inner = self.lock();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::Io { path, source: e }),
        }
        if let Some(len) = inner.sealed.remove(&seq) {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        inner.dirty.remove(&seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::audit::record::tests::sample;

    fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            max_bytes: max,
            segment_bytes: seg,
        }
    }

    /// Total size of the segment files (not of a spare being prepared).
    fn segment_bytes_on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "spool"))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    fn all_records(s: &Spool) -> Vec<DecisionRecord> {
        s.seal_active();
        s.sealed_segments()
            .into_iter()
            .flat_map(|seq| s.read_segment(seq).unwrap().frames.records())
            .collect()
    }

    #[test]
    fn append_seal_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(cfg(dir.path(), 1 << 20, 4096)).unwrap();
        assert!(s.is_empty());
        let recs: Vec<_> = (0..100).map(sample).collect();
        for chunk in recs.chunks(7) {
            s.append(chunk, u64::MAX, false).unwrap();
        }
        assert!(s.sealed_segments().len() > 1, "rotation by size");
        let back = all_records(&s);
        let ids: Vec<_> = back.iter().map(|r| r.decision_id).collect();
        assert_eq!(ids, recs.iter().map(|r| r.decision_id).collect::<Vec<_>>());
        let on_disk = segment_bytes_on_disk(dir.path());
        assert_eq!(s.bytes(), on_disk);
        for seq in s.sealed_segments() {
            s.remove_segment(seq).unwrap();
        }
        assert_eq!(s.bytes(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn reopen_finds_segments_and_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<_> = (0..10).map(sample).collect();
        let first = {
            let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
            s.append(&recs, u64::MAX, true).unwrap();
            s.seal_active();
            s.sealed_segments()[0]
        };
        // Simulate a crash in the middle of writing an 11th record.
        let seg = dir.path().join(segment_name(first));
        let mut frame = Vec::new();
        encode_frames(&[sample(10)], &mut frame);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);

        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(s.sealed_segments(), vec![first]);
        let c = s.read_segment(first).unwrap();
        assert_eq!(c.frames.len(), 10);
        assert_eq!(c.skipped_bytes, (frame.len() / 2) as u64);
        // New appends go to a new segment, never into the recovered one.
        s.append(&[sample(11)], u64::MAX, false).unwrap();
        s.seal_active();
        let segs = s.sealed_segments();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0], first);
        assert_eq!(s.read_segment(segs[1]).unwrap().frames.len(), 1);
    }

    #[test]
    fn a_crash_leaves_a_zeroed_tail_that_reads_as_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<_> = (0..10).map(sample).collect();
        let s = Spool::open(cfg(dir.path(), 1 << 24, 1 << 20)).unwrap();
        let frames = Frames::of_records(&recs);
        let seq = s.journal(frames.as_bytes(), 10, u64::MAX).unwrap();
        // The segment is created at its full size, blocks reserved.
        let path = dir.path().join(segment_name(seq));
        assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
        // A crash: nothing is unmapped, cut or synced by the process, and a segment prepared
        // ahead is left behind.
        std::mem::forget(s);
        let leftover = dir.path().join(spare_name(99));
        fs::write(&leftover, [0u8; 4096]).unwrap();
        let s = Spool::open(cfg(dir.path(), 1 << 24, 1 << 20)).unwrap();
        assert!(
            !leftover.exists(),
            "an unused spare segment is deleted at start"
        );
        let c = s.read_segment(seq).unwrap();
        assert_eq!((c.frames.len(), c.skipped_bytes, c.undecodable), (10, 0, 0));
        assert_eq!(c.frames.as_bytes(), frames.as_bytes());
        // A frame larger than a segment gets a segment of its own size.
        let big: Vec<_> = (0..3000).map(sample).collect();
        let big = Frames::of_records(&big);
        assert!(big.as_bytes().len() > 1 << 20);
        s.append_frames(big.as_bytes(), u64::MAX, true).unwrap();
        s.seal_active();
        let last = *s.sealed_segments().last().unwrap();
        assert_eq!(s.read_segment(last).unwrap().frames.len(), 3000);
        let on_disk = segment_bytes_on_disk(dir.path());
        assert_eq!(
            on_disk,
            s.bytes(),
            "sealed segments are cut to their used length"
        );
    }

    #[test]
    fn segments_in_the_older_record_codec_are_read_as_rows() {
        let recs: Vec<_> = (0..4).map(sample).collect();
        let mut seg = MAGIC.to_vec();
        for r in &recs {
            let mut payload = Vec::new();
            codec::encode(r, &mut payload);
            let len = (payload.len() as u32).to_le_bytes();
            seg.extend_from_slice(&len);
            seg.extend_from_slice(&frame_crc(len, &payload).to_le_bytes());
            seg.extend_from_slice(&payload);
        }
        let c = decode_segment(&seg);
        assert_eq!((c.frames.len(), c.undecodable, c.skipped_bytes), (4, 0, 0));
        let ids: Vec<_> = c.frames.records().iter().map(|r| r.decision_id).collect();
        assert_eq!(ids, recs.iter().map(|r| r.decision_id).collect::<Vec<_>>());
        // The converted rows are exactly what the current encoder writes.
        assert_eq!(c.frames.as_bytes(), Frames::of_records(&recs).as_bytes());
    }

    #[test]
    fn frames_split_into_chunks_and_copy_bodies() {
        let recs: Vec<_> = (0..10).map(sample).collect();
        let f = Frames::of_records(&recs);
        let chunks = f.chunks(4);
        assert_eq!(
            chunks.iter().map(Frames::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut joined = Frames::default();
        chunks.iter().for_each(|c| joined.extend(c));
        assert_eq!(joined.as_bytes(), f.as_bytes());
        let rows: usize = f.rows().map(<[u8]>::len).sum();
        assert_eq!(f.copy_body().len(), 19 + rows + 2);
    }

    #[test]
    fn corrupt_frame_stops_reading_without_panic() {
        let mut buf = MAGIC.to_vec();
        encode_frames(&[sample(0), sample(1), sample(2)], &mut buf);
        let mut one = MAGIC.to_vec();
        encode_frames(&[sample(0)], &mut one);
        let flip = one.len() + 20; // inside the second frame's payload
        buf[flip] ^= 0xff;
        let c = decode_segment(&buf);
        assert_eq!(c.frames.len(), 1);
        assert!(c.skipped_bytes > 0);
        // Garbage and empty files decode to nothing.
        assert_eq!(decode_segment(b"").frames.len(), 0);
        assert_eq!(decode_segment(&[0xff; 100]).frames.len(), 0);
        let mut huge_len = MAGIC.to_vec();
        huge_len.extend_from_slice(&u32::MAX.to_le_bytes());
        huge_len.extend_from_slice(&[0; 8]);
        assert_eq!(decode_segment(&huge_len).frames.len(), 0);
    }

    #[test]
    fn journal_segments_are_replayed_only_when_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
        let mut frames = Vec::new();
        encode_frames(&[sample(0), sample(1)], &mut frames);
        let a = s.journal(&frames, 2, u64::MAX).unwrap();
        s.seal_active();
        assert!(
            s.settled_segments().is_empty(),
            "pending records hold the segment"
        );
        s.resolve(a, 2, true);
        assert_eq!(
            s.settled_segments(),
            vec![(a, false)],
            "committed: delete, no replay"
        );
        let b = s.journal(&frames, 2, u64::MAX).unwrap();
        assert_ne!(a, b);
        s.resolve(b, 1, true);
        s.resolve(b, 1, false);
        s.seal_active();
        assert_eq!(s.settled_segments(), vec![(a, false), (b, true)]);
        // After a crash every segment found is replayed.
        drop(s);
        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(s.settled_segments(), vec![(a, true), (b, true)]);
        assert_eq!(s.read_segment(a).unwrap().frames.len(), 2);
    }

    #[test]
    fn cap_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(cfg(dir.path(), 4096, 1024)).unwrap();
        let mut accepted = 0;
        let err = loop {
            match s.append(&[sample(accepted)], u64::MAX, false) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 1000, "the cap never triggered");
        };
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert!(s.bytes() <= 4096);
        assert_eq!(all_records(&s).len() as u64, accepted);
    }
}
