//! Process stdio streams: one raw vsock connection per stream of each
//! process, to the agent's stdio port (agent port + 1).
//!
//! The host connects and sends one header line
//! `FIREDOOR-STDIO 1 <container_id> <exec_id|-> <stdin|stdout|stderr>\n`;
//! the agent answers `OK\n` once the stream is attached to the process, or
//! `ERR <reason>\n` and closes. After `OK` the connection carries raw bytes:
//! host to process for stdin, process to host for stdout/stderr, closed by
//! the agent at the process's EOF.

use std::{
    fmt,
    io::{self, Read, Write},
    str::FromStr,
};

const MAGIC: &str = "FIREDOOR-STDIO";
const VERSION: &str = "1";
/// Longest header or reply line accepted, newline included.
pub const MAX_LINE: usize = 320;
/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// The vsock port of the agent's stdio listener.
pub fn port(agent_port: u32) -> u32 {
    agent_port.wrapping_add(1)
}

/// Whether `id` may be a container or exec id: 1-128 of `[A-Za-z0-9_.-]`,
/// not starting with '.' (so it is always a safe single path component).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdin => "stdin",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

impl FromStr for Stream {
    type Err = HeaderError;
    fn from_str(s: &str) -> Result<Self, HeaderError> {
        match s {
            "stdin" => Ok(Stream::Stdin),
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            _ => Err(HeaderError::Malformed(format!("unknown stream {s:?}"))),
        }
    }
}

/// Which process stream a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub stream: Stream,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("malformed stdio header: {0}")]
    Malformed(String),
    #[error("stdio stream rejected: {0}")]
    Rejected(String),
    #[error("stdio stream: {0}")]
    Io(#[from] io::Error),
}

impl StreamHeader {
    pub fn new(container_id: &str, exec_id: &str, stream: Stream) -> Self {
        StreamHeader {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stream,
        }
    }

    pub fn encode(&self) -> String {
        let exec = if self.exec_id.is_empty() {
            "-"
        } else {
            &self.exec_id
        };
        format!(
            "{MAGIC} {VERSION} {} {exec} {}\n",
            self.container_id, self.stream
        )
    }

    pub fn parse(line: &str) -> Result<Self, HeaderError> {
        let malformed = |what: &str| HeaderError::Malformed(format!("{what} in {line:?}"));
        let line = line
            .strip_suffix('\n')
            .ok_or_else(|| malformed("no newline"))?;
        let words: Vec<&str> = line.split(' ').collect();
        let [magic, version, container_id, exec_id, stream] = words[..] else {
            return Err(malformed("wrong number of fields"));
        };
        if magic != MAGIC || version != VERSION {
            return Err(malformed("unknown magic or version"));
        }
        if !valid_id(container_id) {
            return Err(malformed("invalid container id"));
        }
        let exec_id = if exec_id == "-" { "" } else { exec_id };
        if !exec_id.is_empty() && !valid_id(exec_id) {
            return Err(malformed("invalid exec id"));
        }
        Ok(StreamHeader::new(container_id, exec_id, stream.parse()?))
    }

    /// Reads and parses the header from a fresh connection (byte by byte, so
    /// no stream data is consumed; at most [`MAX_LINE`] bytes).
    pub fn read_from(reader: &mut impl Read) -> Result<Self, HeaderError> {
        Self::parse(&read_line(reader)?)
    }

    /// Host side: sends the header and waits for the agent's answer.
    pub fn attach(&self, conn: &mut (impl Read + Write)) -> Result<(), HeaderError> {
        conn.write_all(self.encode().as_bytes())?;
        let reply = read_line(conn)?;
        match reply.strip_suffix('\n') {
            Some("OK") => Ok(()),
            Some(rest) => Err(HeaderError::Rejected(
                rest.strip_prefix("ERR ").unwrap_or(rest).to_string(),
            )),
            None => Err(HeaderError::Malformed(format!("reply {reply:?}"))),
        }
    }
}

/// Agent side: accepts the stream.
pub fn accept(conn: &mut impl Write) -> io::Result<()> {
    conn.write_all(b"OK\n")
}

/// Agent side: refuses the stream with a reason (one line).
pub fn reject(conn: &mut impl Write, reason: &str) -> io::Result<()> {
    let mut reason: String = reason
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    reason.truncate(MAX_LINE - 6);
    conn.write_all(format!("ERR {reason}\n").as_bytes())
}

fn read_line(reader: &mut impl Read) -> Result<String, HeaderError> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        if line.len() == MAX_LINE {
            return Err(HeaderError::Malformed("line too long".into()));
        }
        match reader.read(&mut byte) {
            Ok(0) => return Err(HeaderError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(line).map_err(|_| HeaderError::Malformed("not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixStream, thread};

    use super::*;

    #[test]
    fn header_round_trips() {
        for header in [
            StreamHeader::new("c1", "", Stream::Stdout),
            StreamHeader::new("my.container_2", "exec-7", Stream::Stdin),
        ] {
            assert_eq!(StreamHeader::parse(&header.encode()).unwrap(), header);
        }
        assert_eq!(
            StreamHeader::new("c1", "", Stream::Stderr).encode(),
            "FIREDOOR-STDIO 1 c1 - stderr\n"
        );
    }

    #[test]
    fn rejects_bad_headers() {
        for bad in [
            "FIREDOOR-STDIO 1 c1 - stdout",
            "FIREDOOR-STDIO 2 c1 - stdout\n",
            "HELLO 1 c1 - stdout\n",
            "FIREDOOR-STDIO 1 ../etc - stdout\n",
            "FIREDOOR-STDIO 1 c1 a/b stdout\n",
            "FIREDOOR-STDIO 1 c1 - stdlog\n",
            "FIREDOOR-STDIO 1 c1  - stdout\n",
            "FIREDOOR-STDIO 1 c1 - stdout extra\n",
        ] {
            assert!(StreamHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids() {
        assert!(valid_id("abc-DEF_1.2"));
        assert!(!valid_id(""));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(129)));
        assert!(valid_id(&"x".repeat(128)));
    }

    #[test]
    fn overlong_line_is_refused_without_reading_on() {
        let data = vec![b'a'; 10 * MAX_LINE];
        let err = StreamHeader::read_from(&mut &data[..]).unwrap_err();
        assert!(matches!(err, HeaderError::Malformed(_)));
    }

    #[test]
    fn attach_and_accept_over_a_socket() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let agent = thread::spawn(move || {
            let header = StreamHeader::read_from(&mut agent).unwrap();
            accept(&mut agent).unwrap();
            agent.write_all(b"payload").unwrap();
            header
        });
        let header = StreamHeader::new("c1", "e1", Stream::Stdout);
        header.attach(&mut host).unwrap();
        assert_eq!(agent.join().unwrap(), header);
        let mut rest = String::new();
        host.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "payload");
    }

    #[test]
    fn rejection_carries_the_reason() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let agent = thread::spawn(move || {
            StreamHeader::read_from(&mut agent).unwrap();
            reject(&mut agent, "no such container: c9\nsecond line").unwrap();
        });
        let err = StreamHeader::new("c9", "", Stream::Stdin)
            .attach(&mut host)
            .unwrap_err();
        agent.join().unwrap();
        assert_eq!(
            err.to_string(),
            "stdio stream rejected: no such container: c9 second line"
        );
    }
}
