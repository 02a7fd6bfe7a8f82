//! A process's stdio between containerd and the guest: each stream is its
//! own raw vsock connection to the agent's stdio port (see the protocol's
//! `stdio` module), copied to or from what containerd gave us: a FIFO path
//! (ctr, CRI), `file:///path`, or `binary:///logger?arg=value` (a logging
//! binary that reads fds 3 and 4, as runc's shim runs it).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{fs::OpenOptionsExt, net::UnixStream, process::CommandExt},
    },
    path::PathBuf,
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context};
use firedoor_hypervisor::process::ManagedChild;
use firedoor_protocol::{
    agent::Stdio as AgentStdio,
    stdio::{Stream, StreamHeader},
};
use log::{debug, warn};
use nix::{
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};

/// What containerd asked for, as it asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// Which streams the agent should give the process.
    pub fn agent_stdio(&self) -> AgentStdio {
        AgentStdio {
            terminal: self.terminal,
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            // A terminal has one output: the pty.
            stderr: !self.stderr.is_empty() && !self.terminal,
            ..Default::default()
        }
    }
}

/// Where an output stream goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_destination(uri: &str) -> anyhow::Result<Destination> {
    if let Some(path) = uri.strip_prefix("file://") {
        anyhow::ensure!(
            path.starts_with('/'),
            "log URI {uri:?}: the file path must be absolute"
        );
        return Ok(Destination::File(percent_decode(path).into()));
    }
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        anyhow::ensure!(
            path.starts_with('/'),
            "log URI {uri:?}: the binary path must be absolute"
        );
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(percent_decode(key));
            if !value.is_empty() {
                args.push(percent_decode(value));
            }
        }
        return Ok(Destination::Binary {
            path: percent_decode(path).into(),
            args,
        });
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        bail!("unsupported stdio URI scheme {scheme:?} in {uri:?} (use a FIFO path, file:// or binary://)");
    }
    Ok(Destination::Fifo(uri.into()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a logging binary may take to signal that it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The host ends of one process's streams, copying in threads.
#[derive(Debug)]
pub struct ProcessIo {
    stdin_stop: Option<OwnedFd>,
    drain: Option<OutputDrain>,
    logger: Option<ManagedChild>,
}

/// Tells when every output stream of a process has reached its end.
#[derive(Debug)]
pub struct OutputDrain {
    done: mpsc::Receiver<()>,
    pending: usize,
}

impl OutputDrain {
    /// Waits (up to `timeout`) until every output stream has reached its
    /// end, so that all output is delivered before the exit is reported.
    pub fn wait(mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => self.pending -= 1,
                Err(_) => return false,
            }
        }
        true
    }
}

impl ProcessIo {
    /// Opens every stream `paths` asks for: `connect` opens a raw
    /// connection to the agent's stdio port. Returns once the agent has
    /// accepted each stream, so the process may be started.
    pub fn attach(
        paths: &StdioPaths,
        container_id: &str,
        exec_id: &str,
        namespace: &str,
        connect: &dyn Fn() -> anyhow::Result<UnixStream>,
    ) -> anyhow::Result<ProcessIo> {
        let wanted = paths.agent_stdio();
        let open_stream = |stream: Stream| -> anyhow::Result<UnixStream> {
            let mut conn = connect()?;
            StreamHeader::new(container_id, exec_id, stream)
                .attach(&mut conn)
                .with_context(|| format!("attaching {stream}"))?;
            Ok(conn)
        };

        let (done_tx, done) = mpsc::channel();
        let mut drain = OutputDrain { done, pending: 0 };
        let mut io = ProcessIo {
            stdin_stop: None,
            drain: None,
            logger: None,
        };

        let mut outputs: Vec<(Stream, Box<dyn Write + Send>)> = Vec::new();
        if wanted.stdout || wanted.stderr {
            let (out, err, logger) = open_outputs(paths, wanted.stderr, container_id, namespace)?;
            io.logger = logger;
            outputs.extend(out.map(|w| (Stream::Stdout, w)));
            outputs.extend(err.map(|w| (Stream::Stderr, w)));
        }
        for (stream, mut dest) in outputs {
            let mut conn = open_stream(stream)?;
            let done_tx = done_tx.clone();
            drain.pending += 1;
            thread::Builder::new()
                .name(format!("io-{stream}"))
                .spawn(move || {
                    if let Err(e) = io::copy(&mut conn, &mut dest) {
                        debug!("{stream} copy ended: {e}");
                    }
                    drop(dest);
                    let _ = done_tx.send(());
                })
                .context("starting an output thread")?;
        }
        io.drain = Some(drain);

        if wanted.stdin {
            let fifo = OpenOptions::new()
                .read(true)
                .custom_flags(OFlag::O_NONBLOCK.bits())
                .open(&paths.stdin)
                .with_context(|| format!("opening stdin {}", paths.stdin))?;
            let conn = open_stream(Stream::Stdin)?;
            let (stop_rx, stop_tx) = pipe()?;
            io.stdin_stop = Some(stop_tx);
            thread::Builder::new()
                .name("io-stdin".into())
                .spawn(move || {
                    if let Err(e) = copy_stdin(fifo, conn, stop_rx) {
                        debug!("stdin copy ended: {e}");
                    }
                })
                .context("starting the stdin thread")?;
        }
        Ok(io)
    }

    /// containerd's CloseIO: deliver what is buffered, then end the
    /// process's stdin.
    pub fn close_stdin(&mut self) {
        if let Some(stop) = self.stdin_stop.take() {
            let _ = nix::unistd::write(&stop, &[1]);
        }
    }

    /// The end-of-output notice, taken once: the exit path waits on it
    /// without holding the process's I/O (CloseIO may come meanwhile).
    pub fn take_output_drain(&mut self) -> Option<OutputDrain> {
        self.drain.take()
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.close_stdin();
        if let Some(mut logger) = self.logger.take() {
            // The logger ends by itself at EOF of its pipes.
            if let Ok(None) = logger.wait_timeout(Duration::from_secs(5)) {
                warn!(
                    "logging binary (pid {}) still running; killing it",
                    logger.pid()
                );
            }
        }
    }
}

type Output = Option<Box<dyn Write + Send>>;

/// Opens the stdout and (if wanted) stderr destinations.
fn open_outputs(
    paths: &StdioPaths,
    want_stderr: bool,
    container_id: &str,
    namespace: &str,
) -> anyhow::Result<(Output, Output, Option<ManagedChild>)> {
    let stdout = parse_destination(&paths.stdout)?;
    if let Destination::Binary { path, args } = &stdout {
        let (out, err, logger) = start_logger(path, args, container_id, namespace)?;
        return Ok((
            Some(Box::new(out)),
            want_stderr.then(|| Box::new(err) as _),
            Some(logger),
        ));
    }
    let open = |dest: Destination| -> anyhow::Result<Box<dyn Write + Send>> {
        Ok(Box::new(match dest {
            // Read-write: opening never blocks, even if the reader is late.
            Destination::Fifo(path) => OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening FIFO {}", path.display()))?,
            Destination::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening log file {}", path.display()))?,
            Destination::Binary { .. } => {
                bail!("stdout and stderr must use the same logging binary")
            }
        }))
    };
    let err = if want_stderr {
        Some(open(parse_destination(&paths.stderr)?)?)
    } else {
        None
    };
    Ok((Some(open(stdout)?), err, None))
}

/// Starts a logging binary the way containerd's runc shim does: fd 3 is the
/// stdout pipe, fd 4 stderr, and it closes fd 5 when it is ready.
fn start_logger(
    path: &PathBuf,
    args: &[String],
    container_id: &str,
    namespace: &str,
) -> anyhow::Result<(File, File, ManagedChild)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace);
    // SAFETY: between fork and exec, only dup2(2) and fcntl(2), which are
    // async-signal-safe, on descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            // Move all above 3..=5 first, so no dup2 below can clobber a
            // descriptor that is still to be moved.
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
            }
            for (target, fd) in (3..).zip(high) {
                nix::unistd::dup2(fd, target)?;
            }
            Ok(())
        });
    }
    let logger = ManagedChild::spawn("logging binary", &mut cmd, None)?;
    drop((out_r, err_r, ready_w));
    // Ready when the logger closes fd 5 (EOF here).
    let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
    let ms =
        PollTimeout::try_from(i32::try_from(LOGGER_READY_TIMEOUT.as_millis()).unwrap_or(i32::MAX))
            .unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, ms).context("waiting for the logging binary")? == 0 {
        bail!(
            "logging binary {} did not get ready within {LOGGER_READY_TIMEOUT:?}",
            path.display()
        );
    }
    Ok((File::from(out_w), File::from(err_w), logger))
}

/// Copies the stdin FIFO to the guest until the writer closes it (EOF) or
/// CloseIO, then closes the stream: the agent sees EOF after the last byte.
fn copy_stdin(fifo: File, mut conn: UnixStream, stop: OwnedFd) -> io::Result<()> {
    let mut fifo = fifo;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let stopping = fds[1].any().unwrap_or(false);
        let fifo_ready = fds[0].any().unwrap_or(false);
        if fifo_ready || stopping {
            // Drain what is there; EAGAIN means "nothing more for now".
            loop {
                match fifo.read(&mut buf) {
                    Ok(0) => return finish(conn),
                    Ok(n) => conn.write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if stopping {
            return finish(conn);
        }
    }
}

/// A close-on-exec pipe: our descriptors must not leak into the VMM or
/// other helpers we start.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating a pipe")
}

fn finish(conn: UnixStream) -> io::Result<()> {
    conn.shutdown(std::net::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("/run/fifo/1-stdout").unwrap(),
            Destination::Fifo("/run/fifo/1-stdout".into())
        );
        assert_eq!(
            parse_destination("file:///var/log/c%201.log").unwrap(),
            Destination::File("/var/log/c 1.log".into())
        );
        assert_eq!(
            parse_destination("binary:///usr/bin/logger?id=abc&flag").unwrap(),
            Destination::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "abc".into(), "flag".into()]
            }
        );
        parse_destination("tcp://host:1").unwrap_err();
        parse_destination("file://relative").unwrap_err();
    }

    #[test]
    fn terminal_has_no_stderr_stream() {
        let paths = StdioPaths {
            stdin: "i".into(),
            stdout: "o".into(),
            stderr: "e".into(),
            terminal: true,
        };
        let stdio = paths.agent_stdio();
        assert!(stdio.terminal && stdio.stdin && stdio.stdout && !stdio.stderr);
        let none = StdioPaths::default().agent_stdio();
        assert!(!none.stdin && !none.stdout && !none.stderr);
    }

    /// A fake agent accepting every stream: stdout gets "out", stderr
    /// "err"; stdin is echoed back into a channel.
    fn fake_agent() -> (
        impl Fn() -> anyhow::Result<UnixStream>,
        mpsc::Receiver<String>,
    ) {
        let (tx, rx) = mpsc::channel();
        let connect = move || -> anyhow::Result<UnixStream> {
            let (host, mut agent) = UnixStream::pair()?;
            let tx = tx.clone();
            thread::spawn(move || {
                let header = StreamHeader::read_from(&mut agent).unwrap();
                firedoor_protocol::stdio::accept(&mut agent).unwrap();
                match header.stream {
                    Stream::Stdout => agent.write_all(b"out").unwrap(),
                    Stream::Stderr => agent.write_all(b"err").unwrap(),
                    Stream::Stdin => {
                        let mut data = String::new();
                        agent.read_to_string(&mut data).unwrap();
                        tx.send(data).unwrap();
                    }
                }
            });
            Ok(host)
        };
        (connect, rx)
    }

    #[test]
    fn fifos_and_files_get_the_output_and_stdin_ends_on_close_io() {
        let dir = tempfile::tempdir().unwrap();
        let stdin = dir.path().join("stdin");
        let stdout = dir.path().join("stdout");
        nix::unistd::mkfifo(&stdin, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        nix::unistd::mkfifo(&stdout, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stderr = dir.path().join("err.log");
        let paths = StdioPaths {
            stdin: stdin.display().to_string(),
            stdout: stdout.display().to_string(),
            stderr: format!("file://{}", stderr.display()),
            terminal: false,
        };
        // containerd's side of the FIFOs.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(&stdout)
            .unwrap();
        let (connect, stdin_seen) = fake_agent();
        let mut io = ProcessIo::attach(&paths, "c1", "", "default", &connect).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&stdin).unwrap();
        writer.write_all(b"hello").unwrap();
        io.close_stdin();
        assert_eq!(
            stdin_seen.recv_timeout(Duration::from_secs(10)).unwrap(),
            "hello"
        );
        assert!(io
            .take_output_drain()
            .unwrap()
            .wait(Duration::from_secs(10)));
        let mut out = String::new();
        let _ = reader.read_to_string(&mut out);
        assert_eq!(out, "out");
        assert_eq!(std::fs::read_to_string(&stderr).unwrap(), "err");
    }

    #[test]
    fn binary_logger_gets_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logged");
        let script = dir.path().join("logger.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec 5>&-\ncat <&3 > {0}.out\ncat <&4 > {0}.err\necho \"$CONTAINER_ID $1 $2\" > {0}.env\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let uri = format!("binary://{}?tag=x", script.display());
        let paths = StdioPaths {
            stdout: uri.clone(),
            stderr: uri,
            ..Default::default()
        };
        let (connect, _) = fake_agent();
        let mut io = ProcessIo::attach(&paths, "c7", "", "default", &connect).unwrap();
        assert!(io
            .take_output_drain()
            .unwrap()
            .wait(Duration::from_secs(10)));
        drop(io);
        let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", log.display())).unwrap();
        assert_eq!(read("out"), "out");
        assert_eq!(read("err"), "err");
        assert_eq!(read("env"), "c7 tag x\n");
    }
}
