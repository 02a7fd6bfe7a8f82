//! The stdio stream header (`protocol/src/stdio.rs`): parsed from a line,
//! read from a stream, and the agent's reply to it as the host decodes it.
//! A header that parses encodes to a line that parses to the same header.
#![no_main]

use std::io::{Read, Write};

use firedoor_protocol::stdio::{Stream, StreamHeader};
use libfuzzer_sys::fuzz_target;

/// A connection whose peer sends the fuzzer's bytes.
struct Peer<'a>(&'a [u8]);

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(header) = StreamHeader::parse(line) {
            let again = StreamHeader::parse(&header.encode()).expect("an encoded header parses");
            assert_eq!(again, header);
        }
    }
    let mut reader = data;
    let _ = StreamHeader::read_from(&mut reader);
    let header = StreamHeader::new("c1", "", Stream::Stdout);
    let _ = header.attach(&mut Peer(data));
});
