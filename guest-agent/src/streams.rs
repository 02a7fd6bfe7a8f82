//! Process stdio: a pipe per stream (or one pty), whose agent-side end
//! waits until the host attaches a stream connection to it (protocol crate,
//! `stdio` module). Until then a process writing output blocks when the pipe
//! is full, so nothing is lost.

use std::{
    fs::File,
    io::{self, IoSliceMut, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixListener,
    },
    path::Path,
    sync::{
        mpsc::{self, Receiver},
        Mutex,
    },
    thread,
    time::Duration,
};

use firedoor_protocol::stdio::Stream;
use log::{debug, warn};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{
        accept4, bind, listen, recvmsg, shutdown, socket, AddressFamily, Backlog,
        ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockType, VsockAddr,
    },
    unistd::pipe2,
};

/// One connected stream socket (Unix or vsock) carrying raw bytes.
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    pub fn shutdown_write(&self) {
        let _ = shutdown(self.0.as_raw_fd(), Shutdown::Write);
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            timeout.map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX)),
            timeout.map_or(0, |t| i64::from(t.subsec_micros())),
        );
        nix::sys::socket::setsockopt(&self.0, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(io::Error::from)
    }
}

impl From<OwnedFd> for Conn {
    fn from(fd: OwnedFd) -> Self {
        Conn(fd)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.0.as_raw_fd(), buf).map_err(io::Error::from)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.0, buf).map_err(io::Error::from)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The agent's listener for stream connections.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

impl Listener {
    /// `unix:///path` or `vsock://-1:PORT`.
    pub fn bind(addr: &str) -> io::Result<Listener> {
        if let Some(path) = addr.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
            return UnixListener::bind(path).map(Listener::Unix);
        }
        let port = addr
            .strip_prefix("vsock://-1:")
            .and_then(|p| p.parse::<u32>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{addr}: use unix:///PATH or vsock://-1:PORT"),
                )
            })?;
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(64)?)?;
        Ok(Listener::Vsock(fd))
    }

    pub fn accept(&self) -> io::Result<Conn> {
        let raw = match self {
            Listener::Unix(listener) => return listener.accept().map(|(s, _)| Conn(s.into())),
            Listener::Vsock(fd) => accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?,
        };
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        Ok(Conn(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

/// The process's ends of its stdio, handed to the runtime helper.
#[derive(Debug)]
pub struct ProcessSide {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// A process's streams on the agent side.
#[derive(Debug)]
pub struct Streams {
    pending: Mutex<[Option<File>; 3]>,
    terminal: Mutex<Option<File>>,
    /// Dropped to tell the stdin pump to finish (CloseStdin).
    stdin_close: Mutex<Option<OwnedFd>>,
    stdin_close_rx: Mutex<Option<OwnedFd>>,
    stdin_done: Mutex<Option<Receiver<()>>>,
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdin => 0,
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

fn dev_null() -> io::Result<File> {
    File::options().read(true).write(true).open("/dev/null")
}

impl Streams {
    /// Pipes for the enabled streams (`[stdin, stdout, stderr]`); the others
    /// are /dev/null. With a terminal every stream is /dev/null until
    /// [`Streams::set_terminal`] brings the pty.
    pub fn new(enabled: [bool; 3], terminal: bool) -> io::Result<(ProcessSide, Streams)> {
        let mut process: [Option<File>; 3] = [None, None, None];
        let mut pending: [Option<File>; 3] = [None, None, None];
        if !terminal {
            for (i, on) in enabled.iter().enumerate() {
                if *on {
                    let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                    let (theirs, ours) = if i == 0 { (read, write) } else { (write, read) };
                    process[i] = Some(theirs.into());
                    pending[i] = Some(ours.into());
                }
            }
        }
        let [stdin, stdout, stderr] = process;
        let side = ProcessSide {
            stdin: stdin.map_or_else(dev_null, Ok)?,
            stdout: stdout.map_or_else(dev_null, Ok)?,
            stderr: stderr.map_or_else(dev_null, Ok)?,
        };
        let (close_rx, close_tx) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok((
            side,
            Streams {
                pending: Mutex::new(pending),
                terminal: Mutex::new(None),
                stdin_close: Mutex::new(Some(close_tx)),
                stdin_close_rx: Mutex::new(Some(close_rx)),
                stdin_done: Mutex::new(None),
            },
        ))
    }

    /// The pty master: output comes on stdout; stdin (when enabled) goes in.
    /// `size` is the process's `consoleSize` (rows, columns), applied at
    /// once as runc does: the client's first resize can arrive after the
    /// program asked for its size.
    pub fn set_terminal(
        &self,
        master: File,
        stdin: bool,
        stdout: bool,
        size: Option<(u16, u16)>,
    ) -> io::Result<()> {
        if let Some((rows, columns)) = size {
            set_window_size(&master, rows, columns)?;
        }
        let mut pending = lock(&self.pending);
        if stdin {
            pending[0] = Some(master.try_clone()?);
        }
        if stdout {
            pending[1] = Some(master.try_clone()?);
        }
        *lock(&self.terminal) = Some(master);
        Ok(())
    }

    /// Connects a host stream; `Err` is the reason to refuse it.
    pub fn attach(&self, stream: Stream, mut conn: Conn) -> Result<(), String> {
        let Some(end) = lock(&self.pending)[index(stream)].take() else {
            let reason = format!("{stream} is not enabled or already attached");
            let _ = firedoor_protocol::stdio::reject(&mut conn, &reason);
            return Err(reason);
        };
        if let Err(e) = firedoor_protocol::stdio::accept(&mut conn) {
            return Err(format!("answering the host: {e}"));
        }
        let name = format!("stdio-{stream}");
        let spawned = match stream {
            Stream::Stdin => {
                let close = lock(&self.stdin_close_rx).take().ok_or("stdin is closed")?;
                let (done_tx, done_rx) = mpsc::channel();
                *lock(&self.stdin_done) = Some(done_rx);
                thread::Builder::new().name(name).spawn(move || {
                    pump_in(conn, end, close);
                    let _ = done_tx.send(());
                })
            }
            _ => thread::Builder::new()
                .name(name)
                .spawn(move || pump_out(end, conn)),
        };
        spawned
            .map(drop)
            .map_err(|e| format!("starting the copy thread: {e}"))
    }

    /// Closes the process's stdin once what the host sent so far has been
    /// written to it.
    pub fn close_stdin(&self) {
        // Not attached yet: the process reads EOF at once.
        lock(&self.pending)[0] = None;
        drop(lock(&self.stdin_close).take());
        if let Some(done) = lock(&self.stdin_done).take() {
            // A process that stopped reading keeps the pump blocked in a
            // write; do not hold the RPC forever for it.
            if done.recv_timeout(Duration::from_secs(10)).is_err() {
                warn!("stdin still busy 10 s after CloseStdin");
            }
        }
    }

    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), String> {
        let terminal = lock(&self.terminal);
        let master = terminal.as_ref().ok_or("the process has no terminal")?;
        set_window_size(master, rows, columns).map_err(|e| format!("TIOCSWINSZ: {e}"))
    }

    /// Ends the stdin pump (the process is gone).
    pub fn release(&self) {
        drop(lock(&self.stdin_close).take());
    }
}

fn set_window_size(master: &File, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is
    // valid for the call; the fd is an open pty master.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process's `consoleSize` as (rows, columns), when it fits a winsize.
pub fn console_size(process: Option<&oci_spec::runtime::Process>) -> Option<(u16, u16)> {
    let size = process?.console_size()?;
    Some((
        u16::try_from(size.height()).ok()?,
        u16::try_from(size.width()).ok()?,
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

const BUF_SIZE: usize = 64 * 1024;

/// Process output to the host until EOF (for a pty: EIO once the last
/// slave fd is closed), then a half-close so the host reads EOF.
fn pump_out(mut src: File, mut conn: Conn) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    debug!("reading process output: {e}");
                }
                break;
            }
        };
        if let Err(e) = conn.write_all(&buf[..n]) {
            debug!("host output stream: {e}");
            break;
        }
    }
    conn.shutdown_write();
}

/// Host input to the process until the host half-closes, the process goes
/// away or `close` becomes readable (its write end was dropped) while no
/// host data is waiting.
fn pump_in(mut conn: Conn, mut dst: File, close: OwnedFd) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let mut fds = [
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
            PollFd::new(close.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("poll on stdin: {e}");
                break;
            }
            Ok(_) => {}
        }
        let ready = |fd: &PollFd| !fd.revents().unwrap_or(PollFlags::empty()).is_empty();
        if ready(&fds[0]) {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
        } else if ready(&fds[1]) {
            break;
        }
    }
}

/// Listens at `path` for the pty master a container's runtime sends.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { listener })
    }

    /// Takes the master the runtime sent; call after the runtime finished,
    /// the connection and message then wait in the socket.
    pub fn receive(&self) -> io::Result<File> {
        let (conn, _) = self.listener.accept()?;
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut data = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor for
                    // us (SCM_RIGHTS); nothing else owns it.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(io::Error::other(
            "no pty master in the console socket message",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn conn_pair() -> (UnixStream, Conn) {
        let (host, agent) = UnixStream::pair().unwrap();
        (host, Conn(agent.into()))
    }

    #[test]
    fn output_waits_for_attach_and_ends_with_eof() {
        let (mut side, streams) = Streams::new([false, true, false], false).unwrap();
        side.stdout.write_all(b"hello").unwrap();
        drop(side);
        let (mut host, conn) = conn_pair();
        streams.attach(Stream::Stdout, conn).unwrap();
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "OK\nhello");

        let (mut host, conn) = conn_pair();
        assert!(streams.attach(Stream::Stdout, conn).is_err());
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("ERR stdout is not enabled"), "{got}");
    }

    #[test]
    fn close_stdin_delivers_what_was_sent() {
        let (side, streams) = Streams::new([true, false, false], false).unwrap();
        let (mut host, conn) = conn_pair();
        streams.attach(Stream::Stdin, conn).unwrap();
        let mut ok = [0u8; 3];
        host.read_exact(&mut ok).unwrap();
        host.write_all(b"data").unwrap();
        // Wait until the pump has the bytes, as a real process would read.
        let mut stdin = side.stdin;
        let mut got = [0u8; 4];
        stdin.read_exact(&mut got).unwrap();
        streams.close_stdin();
        let mut rest = Vec::new();
        stdin.read_to_end(&mut rest).unwrap();
        assert_eq!(&got, b"data");
        assert!(rest.is_empty());
    }

    #[test]
    fn close_stdin_before_attach_gives_eof() {
        let (side, streams) = Streams::new([true, false, false], false).unwrap();
        streams.close_stdin();
        let mut rest = Vec::new();
        let mut stdin = side.stdin;
        stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(streams.resize(10, 10).is_err());
    }

    #[test]
    fn the_console_size_of_the_spec_is_set_before_the_process_runs() {
        let process: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}, "terminal": true, "consoleSize": {"height": 31, "width": 97}}"#,
        )
        .unwrap();
        assert_eq!(console_size(Some(&process)), Some((31, 97)));
        let huge: oci_spec::runtime::Process =
            serde_json::from_str(r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}, "consoleSize": {"height": 70000, "width": 1}}"#)
                .unwrap();
        assert_eq!(console_size(Some(&huge)), None);

        let master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ptmx")
            .unwrap();
        let (_side, streams) = Streams::new([true, true, false], true).unwrap();
        streams
            .set_terminal(master.try_clone().unwrap(), true, true, Some((31, 97)))
            .unwrap();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which
        // is valid for the call; the fd is an open pty master.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (31, 97));
    }
}
