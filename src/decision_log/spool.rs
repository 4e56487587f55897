//! The on-disk spool: the write-ahead journal of every decision, and where decisions wait
//! while PostgreSQL is down or slow.
//!
//! A spool directory holds append-only segment files `seg-<seq>.spool`. Each starts with an
//! 8-byte magic and then holds frames `len: u32 LE | crc32(len ‖ payload): u32 LE | payload`,
//! the payload being one decision as a row of PostgreSQL's binary `COPY` format (see
//! [`super::copy_row`]; segments of older versions hold the record codec of
//! [`super::row::codec`] instead, and are still read).
//!
//! Writes go to the one active segment, mapped into memory: appending a frame is a copy into
//! the page cache, which outlives a crash of the process just as a `write()` would, without a
//! system call. No disk work happens on that path:
//! - a background thread keeps [`READY_SEGMENTS`] segments prepared ahead: created at their
//!   full size with every block written (zeros, so a full disk is an error there, never a fault
//!   later), mapped, given their magic and final name, and the directory fsync'd;
//! - when the next frames do not fit, the active segment is handed to a second background
//!   thread, which seals it (unmaps it, cuts it to its used length, fsyncs it) while the write
//!   goes on in a prepared segment. A batch of frames may be split over several segments, at
//!   frame boundaries;
//! - when no prepared segment is ready (the disk cannot keep up), the write is refused
//!   ([`SpoolError::NoSegment`]) rather than waiting: the caller answers UNAVAILABLE.
//!
//! A crash leaves the active segment's unused tail zeroed, which reads as a clean end. Sealed
//! segments are immutable and are deleted only after their records are committed to
//! PostgreSQL. The reader skips a corrupt frame and resynchronises on the next valid one
//! ([`decode_segment`]); a frame the reader would refuse as too large is never written.
//!
//! One spool directory belongs to one process: [`Spool::open`] takes an exclusive lock on
//! `spool.lock` in the directory (holding the process id) and fails while another holds it.
//! A failed fsync makes the spool refuse new records until a later fsync succeeds
//! ([`Spool::sync`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::copy_row;
use super::row::{codec, DecisionRow};

const MAGIC: &[u8; 8] = b"CRASPL1\n";
const FRAME_HEADER: usize = 8;
/// Largest payload the reader accepts; anything larger is corruption. The writer never writes
/// a larger one (see [`Spool::max_payload`]).
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Segments kept prepared ahead of need, so that a burst that fills one never waits.
pub const READY_SEGMENTS: usize = 2;
/// The lock file in the spool directory.
pub const LOCK_FILE: &str = "spool.lock";
/// How long the preparing thread waits before it tries again after a failure.
const PREPARE_RETRY: Duration = Duration::from_secs(1);

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
    #[error(
        "the spool directory {dir} is in use by another process ({holder}): one spool \
         directory belongs to one process; stop that process or give this one its own --spool-dir"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("no prepared spool segment is ready in {dir} (the disk does not keep up{})",
        .error.as_ref().map(|e| format!("; preparing one failed: {e}")).unwrap_or_default())]
    NoSegment { dir: PathBuf, error: Option<String> },
    #[error("a spool frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("an fsync of the spool in {dir} failed; no record is taken until an fsync succeeds")]
    Unhealthy { dir: PathBuf },
    #[error("the spool in {dir} is closed")]
    Closed { dir: PathBuf },
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
    /// Cap on the total size of all segments, in bytes (segments prepared ahead, at most
    /// [`READY_SEGMENTS`] of `segment_bytes`, come on top).
    pub max_bytes: u64,
    /// Size of a segment; one is sealed when the next frame does not fit.
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

    fn room(&self) -> u64 {
        self.cap - self.len
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

/// Fault injection for tests: failing or blocking fsyncs, pausing the preparing thread.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    fail_fsync: AtomicBool,
    /// While true, every fsync waits (on `Core::cv`).
    block_fsync: AtomicBool,
    pause_prepare: AtomicBool,
    fsyncs: AtomicU64,
}

struct Inner {
    active: Option<Active>,
    /// Segments prepared ahead, oldest (lowest sequence number) first.
    ready: VecDeque<Active>,
    /// More prepared segments wanted by a blocking append than [`READY_SEGMENTS`].
    wanted: usize,
    /// Why the last preparation failed, until one succeeds.
    prepare_error: Option<String>,
    /// Full segments handed to the sealing thread, and how many it is sealing now.
    to_seal: VecDeque<Active>,
    sealing: usize,
    next_seq: u64,
    /// Sealed segments by sequence number, with their size.
    sealed: BTreeMap<u64, u64>,
    /// Journaled records per segment still on their way to PostgreSQL (see [`Spool::journal`]).
    pending: HashMap<u64, u64>,
    /// Segments holding records that may not be in PostgreSQL: they must be replayed. Segments
    /// that are neither pending nor dirty hold only committed records and are just deleted.
    dirty: BTreeSet<u64>,
    /// Since when each segment has held a record that may not be in PostgreSQL (pending or
    /// dirty): the age of the oldest unrecorded decision is the age of the oldest entry.
    unrecorded_since: HashMap<u64, Instant>,
    /// No more writes (after [`Spool::close`]).
    closed: bool,
    /// The background threads stop.
    stopping: bool,
}

/// What the spool and its two background threads share.
struct Core {
    cfg: SpoolConfig,
    inner: Mutex<Inner>,
    /// Signalled on every change the threads or waiters look at.
    cv: Condvar,
    bytes: AtomicU64,
    /// An fsync failed and none succeeded since (see [`Spool::sync`]).
    fsync_failed: AtomicBool,
    #[cfg(test)]
    faults: Faults,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the file state inconsistent in a way
        // the frame checksums do not catch, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_for<'a>(&self, g: MutexGuard<'a, Inner>, d: Duration) -> MutexGuard<'a, Inner> {
        self.cv
            .wait_timeout(g, d)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// fsyncs `file` (data only, or everything with `all`); a failure marks the spool unhealthy.
    fn fsync(&self, file: &File, all: bool) -> io::Result<()> {
        #[cfg(test)]
        {
            self.faults.fsyncs.fetch_add(1, Ordering::Relaxed);
            let mut g = self.lock();
            while self.faults.block_fsync.load(Ordering::SeqCst) {
                g = self.wait_for(g, Duration::from_millis(50));
            }
            drop(g);
            if self.faults.fail_fsync.load(Ordering::SeqCst) {
                self.fsync_failed.store(true, Ordering::SeqCst);
                return Err(io::Error::other("injected fsync failure"));
            }
        }
        let r = if all {
            file.sync_all()
        } else {
            file.sync_data()
        };
        if r.is_err() {
            self.fsync_failed.store(true, Ordering::SeqCst);
        }
        r
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.fsync(&File::open(&self.cfg.dir)?, true)
    }

    /// The next free segment number and its path.
    fn reserve_name(&self, inner: &mut Inner) -> (u64, PathBuf) {
        loop {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let path = self.cfg.dir.join(segment_name(seq));
            if !path.exists() && !self.cfg.dir.join(spare_name(seq)).exists() {
                return (seq, path);
            }
        }
    }

    /// Prepares segment `seq`: created as `seg-<seq>.spare` at full size with every block
    /// written (zeros), so that writes through the mapping find their blocks allocated (no
    /// page ever waits for an allocation, and a full disk is an error here, never a fault
    /// later); mapped; its magic written; renamed to its final name, and the directory fsync'd
    /// so that the name survives a power loss before any record is in it.
    fn prepare(&self, seq: u64) -> Result<Active> {
        let tmp = self.cfg.dir.join(spare_name(seq));
        let path = self.cfg.dir.join(segment_name(seq));
        let cap = self.cfg.segment_bytes;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let filled = (|| {
            let zeros = vec![0u8; 1 << 20];
            let mut f = &file;
            let mut left = cap;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            // SAFETY: the file was just created by this process, which alone writes the
            // spool directory (it holds its lock); its blocks are written, and it is never
            // shortened while mapped (see `Active::close`).
            unsafe { MmapMut::map_mut(&file) }
        })();
        let map = match filled {
            Ok(m) => m,
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&tmp);
                return Err(SpoolError::Io {
                    path: tmp,
                    source: e,
                });
            }
        };
        let mut a = Active {
            seq,
            path: tmp,
            file,
            map: Some(map),
            len: 0,
            cap,
        };
        a.put(MAGIC);
        if let Err(e) = fs::rename(&a.path, &path) {
            let from = a.path.clone();
            discard(a);
            return Err(SpoolError::Io {
                path: from,
                source: e,
            });
        }
        a.path = path;
        if let Err(e) = self.sync_dir() {
            let dir = self.cfg.dir.clone();
            discard(a);
            return Err(SpoolError::Io {
                path: dir,
                source: e,
            });
        }
        Ok(a)
    }

    /// The preparing thread: keeps [`READY_SEGMENTS`] (or more, when a blocking append wants
    /// them) segments prepared, retrying after a failure.
    fn prepare_loop(&self) {
        let mut inner = self.lock();
        let mut retry_at: Option<Instant> = None;
        loop {
            if inner.stopping {
                break;
            }
            #[cfg(test)]
            if self.faults.pause_prepare.load(Ordering::SeqCst) {
                inner = self.wait_for(inner, Duration::from_millis(20));
                continue;
            }
            if inner.ready.len() >= READY_SEGMENTS.max(inner.wanted) {
                inner = self.wait(inner);
                continue;
            }
            if let Some(at) = retry_at {
                let now = Instant::now();
                if now < at {
                    inner = self.wait_for(inner, at - now);
                    continue;
                }
            }
            let (seq, _) = self.reserve_name(&mut inner);
            drop(inner);
            let r = self.prepare(seq);
            inner = self.lock();
            match r {
                Ok(a) => {
                    retry_at = None;
                    inner.prepare_error = None;
                    inner.ready.push_back(a);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot prepare a spool segment; retrying");
                    retry_at = Some(Instant::now() + PREPARE_RETRY);
                    inner.prepare_error = Some(e.to_string());
                }
            }
            self.cv.notify_all();
        }
    }

    /// The sealing thread: unmaps, cuts and fsyncs the segments handed to it, then makes them
    /// sealed segments (visible to the replay). Stops once asked to and nothing is left.
    fn seal_loop(&self) {
        let mut inner = self.lock();
        loop {
            if let Some(mut a) = inner.to_seal.pop_front() {
                inner.sealing += 1;
                drop(inner);
                let r = a.close().and_then(|()| self.fsync(&a.file, false));
                if let Err(e) = r {
                    tracing::error!(path = %a.path.display(), error = %e, "fsync of a spool segment failed: the spool refuses records until an fsync succeeds");
                }
                let (seq, len) = (a.seq, a.len);
                drop(a);
                inner = self.lock();
                inner.sealing -= 1;
                inner.sealed.insert(seq, len);
                self.cv.notify_all();
                continue;
            }
            if inner.stopping {
                break;
            }
            inner = self.wait(inner);
        }
    }
}

/// The spool of one process. Appends are short and never touch the disk beyond a copy into
/// a mapping; they are safe from any thread.
pub struct Spool {
    core: Arc<Core>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The locked `spool.lock`; released (dropped) by [`Spool::close`] or on drop.
    lock_file: Mutex<Option<File>>,
}

/// The records read back from one sealed segment.
#[derive(Debug)]
pub struct SegmentContents {
    /// The well-formed frames, each holding one row.
    pub frames: Frames,
    /// Bytes skipped as corrupt: not a valid frame, and not a torn last frame. A segment with
    /// skipped bytes is set aside after its valid frames are replayed, never deleted.
    pub skipped_bytes: u64,
    /// Bytes of a torn last frame: one that was being written when the process stopped (its
    /// decision was never answered), followed by nothing but the zeroed tail.
    pub torn_bytes: u64,
    /// Frames whose checksum was right but whose payload could not be decoded.
    pub undecodable: u64,
}

impl SegmentContents {
    /// True when part of the segment could not be read as records (the segment is kept).
    pub fn is_damaged(&self) -> bool {
        self.skipped_bytes > 0 || self.undecodable > 0
    }
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
    /// The largest payload.
    largest: usize,
}

impl Frames {
    pub fn with_capacity(bytes: usize) -> Frames {
        Frames {
            buf: Vec::with_capacity(bytes),
            count: 0,
            largest: 0,
        }
    }

    /// The frames of owned records.
    pub fn of_records(records: &[DecisionRow]) -> Frames {
        let mut f = Frames::with_capacity(records.len() * 560);
        for r in records {
            f.push(|out| copy_row::encode(r, out));
        }
        f
    }

    /// Removes every frame, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.largest = 0;
    }

    /// Appends one frame whose payload `encode` writes. (A payload over [`MAX_PAYLOAD`] gets
    /// a wrong length here; the spool refuses such frames.)
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        encode(&mut self.buf);
        let payload = self.buf.len() - start - FRAME_HEADER;
        let len = (payload as u32).to_le_bytes();
        let crc = frame_crc(len, &self.buf[start + FRAME_HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&len);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
        self.largest = self.largest.max(payload);
    }

    /// Appends one well-formed frame (header included).
    fn push_frame(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
        self.count += 1;
        self.largest = self.largest.max(frame.len() - FRAME_HEADER);
    }

    /// Appends all of `other`'s frames.
    pub fn extend(&mut self, other: &Frames) {
        self.buf.extend_from_slice(&other.buf);
        self.count += other.count;
        self.largest = self.largest.max(other.largest);
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The largest payload, in bytes.
    pub fn largest_payload(&self) -> usize {
        self.largest
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
            let span = pos..(pos + FRAME_HEADER + len).min(self.buf.len());
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
            cur.push_frame(&self.buf[span]);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// The body of one binary `COPY` holding every row.
    pub fn copy_body(&self) -> Vec<u8> {
        copy_row::copy_body(self.rows(), self.buf.len())
    }

    /// The records, decoded (for tests and inspection; rows that do not decode are skipped).
    pub fn records(&self) -> Vec<DecisionRow> {
        self.rows()
            .filter_map(|r| copy_row::decode(r).ok())
            .collect()
    }
}

/// Appends the frame of each record to `out`.
pub fn encode_frames(records: &[DecisionRow], out: &mut Vec<u8>) {
    out.extend_from_slice(Frames::of_records(records).as_bytes());
}

/// The payload length of a valid frame at `pos` of `data` (length within [`MAX_PAYLOAD`] and
/// the data, checksum right).
fn frame_at(data: &[u8], pos: usize) -> Option<usize> {
    let rest = data.get(pos..)?;
    if rest.len() < FRAME_HEADER {
        return None;
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_PAYLOAD || rest.len() < FRAME_HEADER + len as usize {
        return None;
    }
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len as usize];
    (frame_crc(len_bytes, payload) == crc).then_some(len as usize)
}

/// A cheap test before a checksum while resynchronising: the payload starts like a row (its
/// field count) or like the older record codec (its version, 1).
fn plausible_frame(data: &[u8], pos: usize) -> bool {
    let fields = (copy_row::COLUMNS.len() as i16).to_be_bytes();
    match data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + 2) {
        Some(p) => p == fields || copy_row::is_legacy(p) || p[0] == 1,
        None => false,
    }
}

/// Decodes the frames of a whole segment file. A frame that is not valid (checksum, length)
/// is skipped: the reader resynchronises on the next valid frame, trying each byte offset,
/// and counts the bytes skipped. An invalid last frame followed by nothing but zeros, whose
/// length covers what is left, is a torn write (counted apart); the zeroed tail is a clean end.
/// Frames in the older record codec are converted to rows.
pub fn decode_segment(data: &[u8]) -> SegmentContents {
    let mut out = SegmentContents {
        frames: Frames::with_capacity(data.len()),
        skipped_bytes: 0,
        torn_bytes: 0,
        undecodable: 0,
    };
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        out.skipped_bytes = data.len() as u64;
        return out;
    }
    // The end of the data: what follows is the zeroed tail of a segment whose process stopped
    // before sealing it.
    let end = data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
        .max(MAGIC.len());
    let mut pos = MAGIC.len();
    while pos < end {
        let Some(len) = frame_at(data, pos) else {
            let next =
                (pos + 1..end).find(|&p| plausible_frame(data, p) && frame_at(data, p).is_some());
            match next {
                Some(p) => {
                    out.skipped_bytes += (p - pos) as u64;
                    pos = p;
                    continue;
                }
                None => {
                    let rest = &data[pos..end];
                    let torn = rest.len() < FRAME_HEADER
                        || (u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"))
                            <= MAX_PAYLOAD
                            && FRAME_HEADER
                                + u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"))
                                    as usize
                                >= rest.len());
                    if torn {
                        out.torn_bytes = rest.len() as u64;
                    } else {
                        out.skipped_bytes += rest.len() as u64;
                    }
                    break;
                }
            }
        };
        let frame = &data[pos..pos + FRAME_HEADER + len];
        let payload = &frame[FRAME_HEADER..];
        // A row starts with its field count (0x00 0x2b; 0x00 0x2a before V7, 0x00 0x27 before
        // V5); the older codec
        // with its version (1).
        let converted = if payload.first() == Some(&1) {
            codec::decode(payload)
                .map(|r| out.frames.push(|b| copy_row::encode(&r, b)))
                .map_err(|e| e.to_string())
        } else if copy_row::is_legacy(payload) {
            let mut row = Vec::with_capacity(payload.len() + 16);
            copy_row::upgrade_legacy(payload, &mut row)
                .map(|()| out.frames.push(|b| b.extend_from_slice(&row)))
                .map_err(|e| e.to_string())
        } else {
            copy_row::check(payload)
                .map(|()| out.frames.push_frame(frame))
                .map_err(|e| e.to_string())
        };
        if let Err(e) = converted {
            tracing::warn!(error = %e, "skipping an undecodable spooled record");
            out.undecodable += 1;
        }
        pos += FRAME_HEADER + len;
    }
    out
}

/// Where the frames of one journal append went: `(segment, records)` runs, almost always one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    first: (u64, u64),
    rest: Vec<(u64, u64)>,
}

impl Placement {
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        std::iter::once(self.first).chain(self.rest.iter().copied())
    }

    /// The segment of the last run.
    pub fn last_segment(&self) -> u64 {
        self.rest.last().unwrap_or(&self.first).0
    }
}

/// Takes the exclusive lock of the spool directory and writes this process id into it.
fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "process id unknown".to_owned(),
                pid => format!("PID {pid}"),
            };
            return Err(SpoolError::Locked {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(SpoolError::Io { path, source: e }),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| (&file).write_all(pid.as_bytes()))
        .map_err(io_err(&path))?;
    Ok(file)
}

/// True for a segment file that holds no frame: the magic followed by a zero frame header
/// (a segment prepared ahead and never used, or one whose process stopped before its first
/// record), or nothing after the magic.
fn holds_no_frame(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; MAGIC.len() + FRAME_HEADER];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n >= MAGIC.len()
        && &head[..MAGIC.len()] == MAGIC
        && head[MAGIC.len()..n].iter().all(|&b| b == 0))
}

impl Spool {
    /// Opens (creating if needed) the spool directory and takes its lock; existing segments
    /// become sealed segments, to be replayed. Returns once the segments prepared ahead are
    /// ready (or preparing them failed: the spool then refuses records until it works).
    pub fn open(cfg: SpoolConfig) -> Result<Spool> {
        fs::create_dir_all(&cfg.dir).map_err(io_err(&cfg.dir))?;
        let lock_file = take_lock(&cfg.dir)?;
        let mut sealed = BTreeMap::new();
        let mut unrecorded_since = HashMap::new();
        let mut total = 0;
        for entry in fs::read_dir(&cfg.dir).map_err(io_err(&cfg.dir))? {
            let entry = entry.map_err(io_err(&cfg.dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "spare") {
                // A segment being prepared ahead: it holds no record.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) else {
                continue;
            };
            if holds_no_frame(&path).map_err(io_err(&path))? {
                let _ = fs::remove_file(&path);
                continue;
            }
            let meta = entry.metadata().map_err(io_err(&path))?;
            let len = meta.len();
            total += len;
            sealed.insert(seq, len);
            // An earlier run's records: unrecorded since the segment was last written.
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            let now = Instant::now();
            unrecorded_since.insert(seq, now.checked_sub(age).unwrap_or(now));
        }
        let next_seq = sealed.keys().next_back().map_or(1, |s| s + 1);
        // Whatever an earlier run left behind is replayed (idempotently).
        let dirty = sealed.keys().copied().collect();
        let core = Arc::new(Core {
            cfg,
            inner: Mutex::new(Inner {
                active: None,
                ready: VecDeque::new(),
                wanted: 0,
                prepare_error: None,
                to_seal: VecDeque::new(),
                sealing: 0,
                next_seq,
                sealed,
                pending: HashMap::new(),
                dirty,
                unrecorded_since,
                closed: false,
                stopping: false,
            }),
            cv: Condvar::new(),
            bytes: AtomicU64::new(total),
            fsync_failed: AtomicBool::new(false),
            #[cfg(test)]
            faults: Faults::default(),
        });
        let mut threads = Vec::new();
        for (name, run) in [
            ("cra-spool-prep", Core::prepare_loop as fn(&Core)),
            ("cra-spool-seal", Core::seal_loop as fn(&Core)),
        ] {
            let c = core.clone();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run(&c))
                .map_err(io_err(&core.cfg.dir))?;
            threads.push(t);
        }
        let spool = Spool {
            core,
            threads: Mutex::new(threads),
            lock_file: Mutex::new(Some(lock_file)),
        };
        // The first segments are prepared now, so the first decisions find them ready.
        let mut inner = spool.core.lock();
        while inner.ready.len() < READY_SEGMENTS && inner.prepare_error.is_none() {
            inner = spool.core.wait(inner);
        }
        drop(inner);
        Ok(spool)
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.core.cfg
    }

    /// Total bytes of all segments on disk (segments prepared ahead not counted).
    pub fn bytes(&self) -> u64 {
        self.core.bytes.load(Ordering::Relaxed)
    }

    /// The largest payload a frame may have: what the reader accepts and what fits in a segment.
    pub fn max_payload(&self) -> u64 {
        (MAX_PAYLOAD as u64).min(
            self.core
                .cfg
                .segment_bytes
                .saturating_sub((MAGIC.len() + FRAME_HEADER) as u64),
        )
    }

    /// False after a failed fsync, until a later one succeeds (see [`Spool::sync`]).
    pub fn is_healthy(&self) -> bool {
        !self.core.fsync_failed.load(Ordering::SeqCst)
    }

    /// Why segments cannot be prepared, while no prepared segment is ready.
    pub fn prepare_failure(&self) -> Option<String> {
        let inner = self.core.lock();
        if inner.ready.is_empty() {
            inner.prepare_error.clone()
        } else {
            None
        }
    }

    /// True after [`Spool::close`].
    pub fn is_closed(&self) -> bool {
        self.core.lock().closed
    }

    /// True when no segment holds records.
    pub fn is_empty(&self) -> bool {
        let inner = self.core.lock();
        inner.sealed.is_empty()
            && inner.to_seal.is_empty()
            && inner.sealing == 0
            && inner
                .active
                .as_ref()
                .is_none_or(|a| a.len <= MAGIC.len() as u64)
    }

    /// Appends records as one write, refusing if the spool would exceed `limit` bytes (at most
    /// the configured cap). Blocking: it waits for prepared segments if need be, and with
    /// `sync` for the data to be fsync'd. For tools and tests; decisions use [`Spool::journal`].
    pub fn append(&self, records: &[DecisionRow], limit: u64, sync: bool) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.append_frames(&Frames::of_records(records), limit, sync)
    }

    /// Appends frames (see [`Spool::append`]); they will be replayed.
    pub fn append_frames(&self, frames: &Frames, limit: u64, sync: bool) -> Result<()> {
        self.write_frames(frames, limit, false, true)?;
        if sync {
            self.wait_sealed();
            self.sync()?;
        }
        Ok(())
    }

    /// The write-ahead journal: appends `frames` (a copy into the active segment's mapping: no
    /// system call, no fsync — the page cache survives a process crash; fsync is periodic) and
    /// returns where they went. Never waits for the disk: when the frames need a segment and
    /// none is prepared it refuses with [`SpoolError::NoSegment`]. The records count as pending
    /// in their segments until [`Spool::resolve`]; a segment is never deleted while it has
    /// pending records. All or none: on an error nothing was written.
    pub fn journal(&self, frames: &Frames, limit: u64) -> Result<Placement> {
        self.write_frames(frames, limit, true, false)
    }

    /// `records` journaled records of segment `seq` are committed to PostgreSQL
    /// (`committed`), or are left to the spool's replay (`!committed`).
    pub fn resolve(&self, seq: u64, records: u64, committed: bool) {
        let mut inner = self.core.lock();
        if let Some(p) = inner.pending.get_mut(&seq) {
            *p = p.saturating_sub(records);
            if *p == 0 {
                inner.pending.remove(&seq);
            }
        }
        if !committed {
            inner.dirty.insert(seq);
        } else if !inner.pending.contains_key(&seq) && !inner.dirty.contains(&seq) {
            inner.unrecorded_since.remove(&seq);
        }
    }

    /// How long the oldest decision not yet known to be in PostgreSQL has waited: `None`
    /// when every journaled decision is committed.
    pub fn oldest_unrecorded_age(&self) -> Option<Duration> {
        let inner = self.core.lock();
        inner
            .unrecorded_since
            .values()
            .min()
            .map(|since| since.elapsed())
    }

    /// Segment files on disk: the sealed ones and the active one.
    pub fn segments(&self) -> usize {
        let inner = self.core.lock();
        inner.sealed.len()
            + inner.to_seal.len()
            + inner.sealing
            + usize::from(inner.active.is_some())
    }

    /// Sealed segments without pending records, oldest first, each with whether it must be
    /// replayed (`true`) or holds only committed records and may simply be deleted.
    pub fn settled_segments(&self) -> Vec<(u64, bool)> {
        let inner = self.core.lock();
        inner
            .sealed
            .keys()
            .filter(|seq| !inner.pending.contains_key(seq))
            .map(|seq| (*seq, inner.dirty.contains(seq)))
            .collect()
    }

    fn write_frames(
        &self,
        frames: &Frames,
        limit: u64,
        journaled: bool,
        wait: bool,
    ) -> Result<Placement> {
        let core = &*self.core;
        let dir = || core.cfg.dir.clone();
        let buf = frames.as_bytes();
        if frames.is_empty() {
            // Nothing to place (segment 0 does not exist).
            return Ok(Placement {
                first: (0, 0),
                rest: Vec::new(),
            });
        }
        let max = self.max_payload();
        if frames.largest as u64 > max {
            return Err(SpoolError::FrameTooLarge {
                len: frames.largest as u64,
                max,
            });
        }
        let limit = limit.min(core.cfg.max_bytes);
        let mut inner = core.lock();
        // Where each run of frames goes: up to `end` bytes of `buf`, `count` frames; the
        // first run into the active segment (possibly empty), the others each into a fresh
        // prepared segment.
        let (first, fresh) = loop {
            if inner.closed {
                return Err(SpoolError::Closed { dir: dir() });
            }
            if !self.is_healthy() {
                return Err(SpoolError::Unhealthy { dir: dir() });
            }
            let room = inner.active.as_ref().map_or(0, Active::room);
            let plan = if room >= buf.len() as u64 {
                ((buf.len(), frames.len() as u64), Vec::new())
            } else {
                plan_runs(frames, room, core.cfg.segment_bytes - MAGIC.len() as u64)
            };
            let needed = buf.len() as u64 + (plan.1.len() * MAGIC.len()) as u64;
            let used = self.bytes();
            if used + needed > limit {
                return Err(SpoolError::Full {
                    used,
                    needed,
                    limit,
                });
            }
            if plan.1.len() <= inner.ready.len() {
                break plan;
            }
            if !wait || inner.stopping {
                let error = inner.prepare_error.clone();
                return Err(SpoolError::NoSegment { dir: dir(), error });
            }
            if let Some(e) = &inner.prepare_error {
                return Err(SpoolError::NoSegment {
                    dir: dir(),
                    error: Some(e.clone()),
                });
            }
            inner.wanted = plan.1.len();
            core.cv.notify_all();
            inner = core.wait_for(inner, Duration::from_millis(100));
        };
        inner.wanted = 0;
        let inner = &mut *inner;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        let mut put = |inner: &mut Inner, end: usize, count: u64| {
            let a = inner.active.as_mut().expect("an active segment");
            a.put(&buf[at..end]);
            at = end;
            let seq = a.seq;
            inner
                .unrecorded_since
                .entry(seq)
                .or_insert_with(Instant::now);
            if journaled {
                *inner.pending.entry(seq).or_insert(0) += count;
            } else {
                inner.dirty.insert(seq);
            }
            runs.push((seq, count));
        };
        if first.1 > 0 {
            put(inner, first.0, first.1);
        }
        for (end, count) in fresh {
            if let Some(full) = inner.active.take() {
                if full.len > MAGIC.len() as u64 {
                    inner.to_seal.push_back(full);
                } else {
                    self.core.bytes.fetch_sub(full.len, Ordering::Relaxed);
                    discard(full);
                }
            }
            let a = inner.ready.pop_front().expect("counted above");
            self.core
                .bytes
                .fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
            inner.active = Some(a);
            put(inner, end, count);
        }
        self.core
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if runs.len() > 1 || first.1 == 0 {
            // A segment was taken or handed over: wake the background threads.
            core.cv.notify_all();
        }
        let mut runs = runs.into_iter();
        let first = runs.next().expect("at least one run");
        Ok(Placement {
            first,
            rest: runs.collect(),
        })
    }

    /// Waits until every segment handed to the sealing thread is sealed.
    fn wait_sealed(&self) {
        let mut inner = self.core.lock();
        while !inner.to_seal.is_empty() || inner.sealing > 0 {
            inner = self.core.wait(inner);
        }
    }

    /// Hands the active segment, if it holds records, to the sealing thread.
    fn hand_over_active(&self, inner: &mut Inner) {
        let has_records = inner
            .active
            .as_ref()
            .is_some_and(|a| a.len > MAGIC.len() as u64);
        if has_records {
            let a = inner.active.take().expect("checked");
            inner.to_seal.push_back(a);
            self.core.cv.notify_all();
        }
    }

    /// Hands the active segment to the sealing thread if it holds records that must be
    /// replayed (records spooled while PostgreSQL was down or failing), so the replayer can
    /// take it once sealed. Does not wait. A segment whose records are only journaled stays
    /// active until it is full (or shutdown): sealing it early would only use up segments.
    pub fn seal_active_if_dirty(&self) {
        let mut inner = self.core.lock();
        let dirty = inner
            .active
            .as_ref()
            .is_some_and(|a| inner.dirty.contains(&a.seq));
        if dirty {
            self.hand_over_active(&mut inner);
        }
    }

    /// Seals the active segment, if it holds any record, and waits until every segment handed
    /// over is sealed (blocking: not for the recording path).
    pub fn seal_active(&self) {
        self.hand_over_active(&mut self.core.lock());
        self.wait_sealed();
    }

    /// fsyncs the active segment and the spool directory (periodically, for the journal's
    /// unsynced appends; when PostgreSQL cannot take a batch; at shutdown). A failure makes the
    /// spool refuse records ([`SpoolError::Unhealthy`]); a later success makes it healthy again.
    pub fn sync(&self) -> Result<()> {
        let core = &*self.core;
        let f = {
            let inner = core.lock();
            match &inner.active {
                Some(a) => Some((a.path.clone(), a.file.try_clone().map_err(io_err(&a.path))?)),
                None => None,
            }
        };
        if let Some((path, file)) = f {
            core.fsync(&file, false).map_err(io_err(&path))?;
        }
        core.sync_dir().map_err(io_err(&core.cfg.dir))?;
        if core.fsync_failed.swap(false, Ordering::SeqCst) {
            tracing::info!(dir = %core.cfg.dir.display(), "the spool's fsync succeeds again: it takes records again");
        }
        Ok(())
    }

    /// Sequence numbers of the sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<u64> {
        self.core.lock().sealed.keys().copied().collect()
    }

    /// Reads a sealed segment back.
    pub fn read_segment(&self, seq: u64) -> Result<SegmentContents> {
        let path = self.core.cfg.dir.join(segment_name(seq));
        let data = fs::read(&path).map_err(io_err(&path))?;
        let contents = decode_segment(&data);
        if contents.torn_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                torn_bytes = contents.torn_bytes,
                records = contents.frames.len(),
                "spool segment ends with a torn record (written when the process stopped; its decision was never answered); it is skipped"
            );
        }
        if contents.is_damaged() {
            tracing::error!(
                segment = %path.display(),
                skipped_bytes = contents.skipped_bytes,
                undecodable = contents.undecodable,
                records = contents.frames.len(),
                "spool segment holds corrupt bytes; its valid records are read, and the segment is kept aside"
            );
        }
        Ok(contents)
    }

    /// Renames sealed segment `seq` to `<prefix>-<seq>.spool`, out of the replay and the size
    /// cap, for an operator to inspect. Returns the new path.
    fn move_aside(&self, seq: u64, prefix: &str) -> Result<PathBuf> {
        let from = self.core.cfg.dir.join(segment_name(seq));
        let to = self.core.cfg.dir.join(format!("{prefix}-{seq:020}.spool"));
        let mut inner = self.core.lock();
        fs::rename(&from, &to).map_err(io_err(&from))?;
        if let Some(len) = inner.sealed.remove(&seq) {
            self.core.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        inner.dirty.remove(&seq);
        inner.unrecorded_since.remove(&seq);
        Ok(to)
    }

    /// Renames a sealed segment with corrupt bytes (whose valid records were replayed) to
    /// `corrupt-<seq>.spool`, out of the replay and the size cap, for an operator to inspect;
    /// it is never deleted. Returns the new path.
    pub fn set_aside_segment(&self, seq: u64) -> Result<PathBuf> {
        self.move_aside(seq, "corrupt")
    }

    /// Deletes a sealed segment whose records are committed.
    pub fn remove_segment(&self, seq: u64) -> Result<()> {
        let path = self.core.cfg.dir.join(segment_name(seq));
        let mut inner = self.core.lock();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::Io { path, source: e }),
        }
        if let Some(len) = inner.sealed.remove(&seq) {
            self.core.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        inner.dirty.remove(&seq);
        inner.unrecorded_since.remove(&seq);
        Ok(())
    }

    /// Closes the spool (shutdown): refuses further records, seals the active segment, deletes
    /// the segments whose records are all committed and the unused prepared ones, stops the
    /// background threads and releases the directory's lock. Blocking; idempotent.
    pub fn close(&self) {
        self.core.lock().closed = true;
        self.seal_active();
        for (seq, dirty) in self.settled_segments() {
            if !dirty {
                if let Err(e) = self.remove_segment(seq) {
                    tracing::warn!(error = %e, segment = seq, "cannot delete a committed journal segment (replaying it is harmless)");
                }
            }
        }
        self.stop_threads();
        let spares: Vec<Active> = self.core.lock().ready.drain(..).collect();
        spares.into_iter().for_each(discard);
        self.lock_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Tests: makes every fsync fail (`true`) or work again.
    #[cfg(test)]
    pub(crate) fn fail_fsyncs(&self, fail: bool) {
        self.core.faults.fail_fsync.store(fail, Ordering::SeqCst);
    }

    /// Tests: fsyncs attempted so far.
    #[cfg(test)]
    pub(crate) fn fsync_count(&self) -> u64 {
        self.core.faults.fsyncs.load(Ordering::SeqCst)
    }

    fn stop_threads(&self) {
        self.core.lock().stopping = true;
        self.core.cv.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Not closed: the active segment stays (its unused tail is cut), to be replayed.
        self.stop_threads();
        let spares: Vec<Active> = self.core.lock().ready.drain(..).collect();
        spares.into_iter().for_each(discard);
    }
}

/// Splits `frames` at frame boundaries into a run that fits in `room` bytes (possibly empty)
/// and runs that each fit in a fresh segment of `seg_room` bytes: `(end, count)` each, `end`
/// being where the run ends in the frames' bytes.
fn plan_runs(frames: &Frames, room: u64, seg_room: u64) -> ((usize, u64), Vec<(usize, u64)>) {
    let mut runs: Vec<(usize, u64)> = vec![(0, 0)];
    let mut run_start = 0;
    let mut cap = room;
    for span in frames.spans() {
        if (span.end - run_start) as u64 > cap {
            runs.push((span.start, 0));
            run_start = span.start;
            cap = seg_room;
        }
        let run = runs.last_mut().expect("one run at least");
        run.0 = span.end;
        run.1 += 1;
    }
    let first = runs.remove(0);
    (first, runs)
}
#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::decision_log::row::tests::sample;

    fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            max_bytes: max,
            segment_bytes: seg,
        }
    }

    /// Total size of the segment files that hold frames (not of segments prepared ahead).
    fn segment_bytes_on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "spool"))
            .filter(|p| !holds_no_frame(p).unwrap())
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    impl Spool {
        /// What a killed process leaves: the active segment neither unmapped, cut nor synced,
        /// the prepared segments in place; the lock is released (as the kernel does).
        fn crash(self) {
            let active = self.core.lock().active.take();
            std::mem::forget(active);
            let ready: Vec<Active> = self.core.lock().ready.drain(..).collect();
            std::mem::forget(ready);
        }

        fn faults(&self) -> &Faults {
            &self.core.faults
        }
    }

    fn all_records(s: &Spool) -> Vec<DecisionRow> {
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
        // Full segments are sealed by a background thread: wait for it, not for a timer.
        s.wait_sealed();
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
        assert_eq!(c.skipped_bytes, 0, "a torn last frame is not corruption");
        let half = (frame.len() / 2) as u64;
        assert!(c.torn_bytes > 0 && c.torn_bytes <= half, "{c:?}");
        assert!(!c.is_damaged());
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
        let seq = s.journal(&frames, u64::MAX).unwrap().last_segment();
        // The segment is created at its full size, blocks reserved.
        let path = dir.path().join(segment_name(seq));
        assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
        // A crash: nothing is unmapped, cut or synced by the process, and a segment prepared
        // ahead is left behind.
        s.crash();
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
        // A batch larger than a segment is split over several, at frame boundaries.
        let big: Vec<_> = (0..3000).map(sample).collect();
        let big = Frames::of_records(&big);
        assert!(big.as_bytes().len() > 1 << 20);
        let before = s.sealed_segments();
        s.append_frames(&big, u64::MAX, true).unwrap();
        s.seal_active();
        let new: Vec<_> = s
            .sealed_segments()
            .into_iter()
            .filter(|q| !before.contains(q))
            .collect();
        assert!(new.len() >= 2, "{new:?}");
        let mut back = Frames::default();
        for q in new {
            back.extend(&s.read_segment(q).unwrap().frames);
        }
        assert_eq!(back.as_bytes(), big.as_bytes());
        let on_disk = segment_bytes_on_disk(dir.path());
        assert_eq!(
            on_disk,
            s.bytes(),
            "sealed segments are cut to their used length"
        );
    }

    #[test]
    fn segments_in_the_older_record_codec_are_read_as_rows() {
        // The older codec predates trace ids.
        let recs: Vec<_> = (0..4)
            .map(|i| DecisionRow {
                trace_id: None,
                ..sample(i)
            })
            .collect();
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
    fn a_corrupt_frame_is_skipped_and_reading_resumes_at_the_next_valid_one() {
        let recs: Vec<_> = (0..4).map(sample).collect();
        let mut buf = MAGIC.to_vec();
        encode_frames(&recs, &mut buf);
        let mut one = MAGIC.to_vec();
        encode_frames(&recs[..1], &mut one);
        let mut two = one.clone();
        encode_frames(&recs[1..2], &mut two);
        let flip = one.len() + 20; // inside the second frame's payload
        buf[flip] ^= 0xff;
        let c = decode_segment(&buf);
        let ids: Vec<_> = c.frames.records().iter().map(|r| r.decision_id).collect();
        let want: Vec<_> = [0, 2, 3].iter().map(|&i| recs[i].decision_id).collect();
        assert_eq!(ids, want, "the frames after the corrupt one are read");
        assert_eq!(c.skipped_bytes, (two.len() - one.len()) as u64);
        assert_eq!(c.torn_bytes, 0);
        assert!(c.is_damaged());
        // A corrupt length field, and garbage between frames, are skipped the same way.
        let mut buf = MAGIC.to_vec();
        encode_frames(&recs, &mut buf);
        buf[one.len()..one.len() + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        buf.splice(two.len()..two.len(), [0xa5; 37]);
        let c = decode_segment(&buf);
        assert_eq!(c.frames.len(), 3);
        assert_eq!(c.skipped_bytes, (two.len() - one.len()) as u64 + 37);
        // A segment made of zeros after the magic is empty, not damaged; a torn last frame
        // followed by the zeroed tail is torn, not corrupt.
        let mut buf = MAGIC.to_vec();
        buf.resize(4096, 0);
        let c = decode_segment(&buf);
        assert_eq!((c.frames.len(), c.skipped_bytes, c.torn_bytes), (0, 0, 0));
        let mut buf = MAGIC.to_vec();
        encode_frames(&recs, &mut buf);
        let full = buf.len();
        buf.truncate(full - 30);
        buf.resize(full + 4096, 0);
        let c = decode_segment(&buf);
        assert_eq!(c.frames.len(), 3);
        assert_eq!(c.skipped_bytes, 0);
        assert!(c.torn_bytes > 0 && !c.is_damaged(), "{c:?}");
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
        let frames = Frames::of_records(&[sample(0), sample(1)]);
        let a = s.journal(&frames, u64::MAX).unwrap().last_segment();
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
        let b = s.journal(&frames, u64::MAX).unwrap().last_segment();
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

    /// The age of the oldest decision not yet committed: none before any, growing while one
    /// waits, none again once all are committed, and back (from the file's age) after a
    /// restart finds a segment to replay.
    #[test]
    fn the_oldest_unrecorded_decision_is_tracked_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(s.oldest_unrecorded_age(), None);
        let frames = Frames::of_records(&[sample(0), sample(1)]);
        let a = s.journal(&frames, u64::MAX).unwrap().last_segment();
        let first = s.oldest_unrecorded_age().expect("two decisions wait");
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.oldest_unrecorded_age().unwrap() >= first + Duration::from_millis(20));
        s.resolve(a, 1, true);
        assert!(s.oldest_unrecorded_age().is_some(), "one still waits");
        s.resolve(a, 1, true);
        assert_eq!(s.oldest_unrecorded_age(), None, "all committed");
        assert!(s.segments() >= 1);
        let b = s.journal(&frames, u64::MAX).unwrap().last_segment();
        s.resolve(b, 2, false);
        assert!(s.oldest_unrecorded_age().is_some(), "left to the replay");
        drop(s);
        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert!(s.oldest_unrecorded_age().is_some(), "found at restart");
        for (seq, _) in s.settled_segments() {
            s.remove_segment(seq).unwrap();
        }
        assert_eq!(s.oldest_unrecorded_age(), None, "replayed and removed");
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

    #[test]
    fn a_second_open_of_the_same_directory_fails_naming_it_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
        let err = Spool::open(cfg(dir.path(), 1 << 20, 1 << 16))
            .err()
            .expect("a second open of a locked spool directory fails");
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        // The first one is untouched, and the lock goes with it.
        first.append(&[sample(0)], u64::MAX, true).unwrap();
        drop(first);
        let s = Spool::open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
        assert_eq!(s.sealed_segments().len(), 1);
        // close() releases the lock too.
        s.close();
        let again = Spool::open(cfg(dir.path(), 1 << 20, 1 << 16)).unwrap();
        drop(again);
    }

    #[test]
    fn a_frame_the_reader_would_refuse_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than a segment can hold.
        let s = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
        let mut big = Frames::default();
        big.push(|out| out.extend(std::iter::repeat_n(7u8, 5000)));
        let err = s.journal(&big, u64::MAX).unwrap_err();
        assert!(matches!(err, SpoolError::FrameTooLarge { .. }), "{err}");
        assert!(matches!(
            s.append_frames(&big, u64::MAX, true).unwrap_err(),
            SpoolError::FrameTooLarge { .. }
        ));
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        drop(s);
        // Larger than the reader's limit, with segments large enough to hold it.
        let s = Spool::open(cfg(dir.path(), 1 << 30, MAX_PAYLOAD as u64 + (1 << 16))).unwrap();
        let mut huge = Frames::default();
        huge.push(|out| out.extend(std::iter::repeat_n(1u8, MAX_PAYLOAD as usize + 1)));
        let err = s.journal(&huge, u64::MAX).unwrap_err();
        assert!(matches!(err, SpoolError::FrameTooLarge { .. }), "{err}");
        let mut ok = Frames::default();
        ok.push(|out| copy_row::encode(&sample(1), out));
        s.journal(&ok, u64::MAX).unwrap();
        s.seal_active();
        for q in s.sealed_segments() {
            let c = s.read_segment(q).unwrap();
            assert_eq!((c.frames.len(), c.skipped_bytes, c.torn_bytes), (1, 0, 0));
        }
    }

    /// Runs `f` on another thread; panics if it has not returned within a minute (a hang).
    fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the call waited for the disk")
    }

    #[test]
    fn the_journal_never_waits_for_an_fsync_or_for_a_segment_to_be_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap());
        // Every fsync blocks, and no segment is prepared, until the test says so.
        s.faults().block_fsync.store(true, Ordering::SeqCst);
        s.faults().pause_prepare.store(true, Ordering::SeqCst);
        let frames = Frames::of_records(&(0..4).map(sample).collect::<Vec<_>>());
        let per_segment = (4096 - MAGIC.len()) / frames.as_bytes().len();
        assert!(per_segment >= 1);
        // Fill the first segment and go on into the second prepared one: the first is sealed
        // (its fsync blocks) without the journal waiting for it.
        let s2 = s.clone();
        let f2 = frames.clone();
        let placed = returns(move || {
            (0..per_segment + 1)
                .map(|_| s2.journal(&f2, u64::MAX).map(|p| p.last_segment()))
                .collect::<Result<Vec<_>>>()
        })
        .unwrap();
        assert_ne!(placed.first(), placed.last(), "a segment was filled");
        // Fill the second: no prepared segment is left, so the journal refuses at once
        // instead of preparing one itself or waiting.
        let s2 = s.clone();
        let f2 = frames.clone();
        let err = returns(move || loop {
            if let Err(e) = s2.journal(&f2, u64::MAX) {
                break e;
            }
        });
        assert!(matches!(err, SpoolError::NoSegment { .. }), "{err}");
        assert!(
            s.sealed_segments().is_empty(),
            "the seal is still waiting for its fsync"
        );
        // Once the disk answers, segments are prepared and sealed again.
        s.faults().block_fsync.store(false, Ordering::SeqCst);
        s.faults().pause_prepare.store(false, Ordering::SeqCst);
        s.core.cv.notify_all();
        let s2 = s.clone();
        returns(move || s2.append_frames(&frames, u64::MAX, true)).unwrap();
        assert!(!s.sealed_segments().is_empty());
    }

    #[test]
    fn a_failed_fsync_refuses_records_until_an_fsync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
        let one = Frames::of_records(&[sample(0)]);
        s.journal(&one, u64::MAX).unwrap();
        s.faults().fail_fsync.store(true, Ordering::SeqCst);
        assert!(s.sync().is_err());
        assert!(!s.is_healthy());
        let err = s.journal(&one, u64::MAX).unwrap_err();
        assert!(matches!(err, SpoolError::Unhealthy { .. }), "{err}");
        // Still failing: still refusing.
        assert!(s.sync().is_err());
        assert!(s.journal(&one, u64::MAX).is_err());
        s.faults().fail_fsync.store(false, Ordering::SeqCst);
        s.sync().unwrap();
        assert!(s.is_healthy());
        s.journal(&one, u64::MAX).unwrap();
        // A failed fsync of a sealed segment counts the same.
        s.faults().fail_fsync.store(true, Ordering::SeqCst);
        s.seal_active();
        assert!(!s.is_healthy());
        assert!(s.journal(&one, u64::MAX).is_err());
        s.faults().fail_fsync.store(false, Ordering::SeqCst);
        s.sync().unwrap();
        s.journal(&one, u64::MAX).unwrap();
    }
}
