//! A small TCP measurement, standard library only, used on both ends of
//! the network bench: on the host (linked into the bench) and inside the
//! pods (built statically by the bench, mounted into the busybox image).
//!
//! - throughput: the sender writes N MiB, half-closes, and waits for the
//!   receiver's EOF, which comes only once the receiver has read every
//!   byte; so the time is of data delivered, not of data queued;
//! - round trip: one connection (TCP_NODELAY), a 64-byte request echoed
//!   back, repeated; the mean time of a request until its whole reply.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

/// The size of one request and of its reply in [`round_trips`].
pub const REQUEST_BYTES: usize = 64;

/// Port of the receiver that reads each connection to its end.
pub const SINK_PORT: u16 = 5001;
/// Port of the echo server.
pub const ECHO_PORT: u16 = 5002;

/// Serves [`SINK_PORT`] and [`ECHO_PORT`] on all addresses, for ever, a
/// thread per connection.
pub fn serve() -> io::Result<()> {
    let sink = TcpListener::bind(("0.0.0.0", SINK_PORT))?;
    let echo = TcpListener::bind(("0.0.0.0", ECHO_PORT))?;
    std::thread::spawn(move || accept(&echo, echo_connection));
    accept(&sink, sink_connection);
    Ok(())
}

fn accept(listener: &TcpListener, serve: fn(TcpStream) -> io::Result<()>) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

/// Reads to EOF, then closes: the sender's read sees EOF once all arrived.
fn sink_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    while stream.read(&mut buf)? > 0 {}
    stream.shutdown(Shutdown::Both)
}

fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; REQUEST_BYTES];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => stream.write_all(&buf)?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(30))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    Ok(stream)
}

/// Sends `mib` MiB to the sink at `to`; the time until the sink had them
/// all.
pub fn send(to: SocketAddr, mib: usize) -> io::Result<Duration> {
    let mut stream = connect(to)?;
    let chunk = vec![0x5au8; 1024 * 1024];
    let started = Instant::now();
    for _ in 0..mib {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    Ok(started.elapsed())
}

/// The mean time of `count` request/reply round trips with the echo
/// server at `to`, on one connection, after a few unmeasured ones. A mean
/// over the whole run rather than per request: a guest under TCG may only
/// have a jiffies clock (4 ms steps).
pub fn round_trip(to: SocketAddr, count: usize) -> io::Result<Duration> {
    let mut stream = connect(to)?;
    stream.set_nodelay(true)?;
    let request = [0xa5u8; REQUEST_BYTES];
    let mut reply = [0u8; REQUEST_BYTES];
    let mut exchange = || -> io::Result<()> {
        stream.write_all(&request)?;
        stream.read_exact(&mut reply)
    };
    for _ in 0..5 {
        exchange()?;
    }
    let started = Instant::now();
    for _ in 0..count {
        exchange()?;
    }
    Ok(started.elapsed() / u32::try_from(count.max(1)).unwrap_or(u32::MAX))
}
