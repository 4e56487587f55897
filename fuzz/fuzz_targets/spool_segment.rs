//! The decision log's spool reader: a segment file's bytes, as a restarted server reads them
//! before replaying them into PostgreSQL (`spool::decode_segment`: the frames, checksums,
//! resynchronisation after a corrupt frame, a torn last frame, rows of older formats
//! converted), then the rows read back and put into a `COPY` body.
#![no_main]

use cra::decision_log::{copy_row, spool};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let contents = spool::decode_segment(data);
    let frames = &contents.frames;
    assert!(
        contents.skipped_bytes + contents.torn_bytes <= data.len() as u64,
        "{contents:?}"
    );
    // Every frame kept is one well-formed row, ready for COPY.
    let mut rows = 0;
    for row in frames.rows() {
        if let Err(e) = copy_row::check(row) {
            panic!("the reader kept a malformed row: {e}");
        }
        rows += 1;
    }
    assert_eq!(rows, frames.len());
    let body = frames.copy_body();
    assert!(body.ends_with(&(-1i16).to_be_bytes()));
    let records = frames.records();
    assert!(records.len() <= frames.len());
    let chunks = frames.chunks(3);
    assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), frames.len());

    // What the reader kept, written again as a segment, reads back whole and the same.
    if !frames.is_empty() {
        let mut again = data[..8].to_vec(); // the magic: the reader found it there
        again.extend_from_slice(frames.as_bytes());
        let reread = spool::decode_segment(&again);
        assert!(!reread.is_damaged() && reread.torn_bytes == 0, "{reread:?}");
        assert_eq!(reread.frames.as_bytes(), frames.as_bytes());
    }
});
