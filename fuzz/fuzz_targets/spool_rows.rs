//! The decision log's rows as the spool reader decodes them: each input is a list of frame
//! payloads (each a 2-byte little-endian length, then the payload), written into a segment
//! with their right checksums, so that every payload reaches the row decoders behind the
//! checksum: today's rows (PostgreSQL's binary COPY format, `copy_row::check`), rows of 39
//! columns from older builds (`copy_row::upgrade_legacy`), and the older record codec
//! (`row::codec`); then each row kept is read back (`copy_row::decode`), encoded again and
//! read again.
#![no_main]

use cra::decision_log::{copy_row, spool};
use libfuzzer_sys::fuzz_target;

/// The magic every segment file starts with.
const MAGIC: &[u8] = b"CRASPL1\n";

fn payloads(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// A segment holding `payloads`, each in a frame with its right checksum.
fn segment(payloads: &[&[u8]]) -> Vec<u8> {
    let mut frames = spool::Frames::default();
    for p in payloads {
        frames.push(|out| out.extend_from_slice(p));
    }
    let mut segment = MAGIC.to_vec();
    segment.extend_from_slice(frames.as_bytes());
    segment
}

fuzz_target!(|data: &[u8]| {
    let payloads = payloads(data);
    // A payload of the older codec that the reader accepts becomes a row of today's format,
    // which must read back: the reader made it.
    for p in payloads.iter().filter(|p| p.first() == Some(&1)) {
        let one = spool::decode_segment(&segment(&[p]));
        for row in one.frames.rows() {
            if let Err(e) = copy_row::decode(row) {
                panic!("a row converted from the older codec does not read back: {e}");
            }
        }
    }
    let contents = spool::decode_segment(&segment(&payloads));
    // Every frame has its right checksum: each one is a row or an undecodable payload, and
    // nothing is skipped or taken for a torn write.
    assert_eq!(contents.skipped_bytes, 0, "{contents:?}");
    assert_eq!(contents.torn_bytes, 0, "{contents:?}");
    assert_eq!(
        contents.frames.len() as u64 + contents.undecodable,
        payloads.len() as u64,
        "{contents:?}"
    );
    for row in contents.frames.rows() {
        copy_row::check(row).expect("a kept row is well-formed");
        let Ok(record) = copy_row::decode(row) else {
            continue; // well-formed, but values the record type cannot hold
        };
        // A record read back encodes to a row that reads back to the same encoding.
        let mut once = Vec::new();
        copy_row::encode(&record, &mut once);
        let again = copy_row::decode(&once).expect("an encoded record reads back");
        let mut twice = Vec::new();
        copy_row::encode(&again, &mut twice);
        assert_eq!(once, twice);
    }
});
