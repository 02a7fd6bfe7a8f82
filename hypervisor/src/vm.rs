//! One running microVM: its processes, its run directory, the way in to its
//! guest, and a teardown that leaves nothing behind.

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use log::{debug, info, warn};

use crate::{
    backend::{Backend, BackendKind, RunDir, VmSpec},
    error::IoContext,
    process::{tail_lines, ManagedChild},
    vsock::{ConnectError, GuestVsock},
    Result, VmError,
};

/// Console lines quoted in boot errors.
const CONSOLE_TAIL_LINES: usize = 20;
/// How long a helper may take to exit on SIGTERM once the VMM is gone.
const HELPER_GRACE: Duration = Duration::from_secs(2);
/// Pause between connection attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// Upper bound for one CONNECT reply; a silent VMM is retried after it.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Scans a growing console log for a line, reading only what is new.
struct ConsoleWatch {
    marker: String,
    offset: u64,
    /// The end of the previous read, in case the marker straddles reads.
    carry: String,
    found: bool,
}

impl ConsoleWatch {
    fn new(marker: &str) -> Self {
        ConsoleWatch {
            marker: marker.to_owned(),
            offset: 0,
            carry: String::new(),
            found: false,
        }
    }

    fn seen(&mut self, path: &Path) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        if self.found {
            return true;
        }
        let Ok(mut file) = std::fs::File::open(path) else {
            return false;
        };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.take(1 << 20).read_to_end(&mut new).is_err()
        {
            return false;
        }
        self.offset += new.len() as u64;
        let text = format!("{}{}", self.carry, String::from_utf8_lossy(&new));
        self.found = text.contains(&self.marker);
        let keep = text.len().saturating_sub(self.marker.len());
        self.carry = text.get(keep..).unwrap_or_default().to_owned();
        self.found
    }
}

#[derive(Debug)]
pub struct MicroVm {
    kind: BackendKind,
    accelerator: &'static str,
    vmm: ManagedChild,
    helpers: Vec<ManagedChild>,
    // Dropped after the processes (field order), so sockets outlive them.
    run_dir: RunDir,
    boot_time: Duration,
}

impl MicroVm {
    /// Boots `spec` with `backend` and waits until the guest passes
    /// `spec.ready` (accepts a connection on its vsock port); returns the VM
    /// and that connection.
    /// On any error everything started so far is stopped and removed.
    pub fn start(backend: &dyn Backend, spec: &VmSpec) -> Result<(MicroVm, UnixStream)> {
        spec.validate()?;
        let started = Instant::now();
        let run_dir = RunDir::create(&spec.run_base, spec.run_dir_name.as_deref())?;
        let launch = backend.launch(spec, &run_dir)?;
        let mut vm = MicroVm {
            kind: backend.kind(),
            accelerator: backend.accelerator(),
            vmm: launch.vmm,
            helpers: launch.helpers,
            run_dir,
            boot_time: Duration::ZERO,
        };
        let stream = vm.wait_for_agent(spec, started)?;
        vm.boot_time = started.elapsed();
        info!(
            "{} VM ({}) pid {}: agent answered after {} ms",
            vm.kind,
            vm.accelerator,
            vm.vmm.pid(),
            vm.boot_time.as_millis()
        );
        Ok((vm, stream))
    }

    fn wait_for_agent(&mut self, spec: &VmSpec, started: Instant) -> Result<UnixStream> {
        let (port, timeout) = (spec.ready.vsock_port, spec.boot_timeout);
        let deadline = started + timeout;
        let mut marker = spec.ready.console_marker.as_deref().map(ConsoleWatch::new);
        let vsock = self.vsock();
        loop {
            self.check_alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::BootTimeout {
                    port,
                    timeout,
                    console: self.console_tail(CONSOLE_TAIL_LINES),
                });
            }
            let waiting_for_marker = match &mut marker {
                Some(watch) => {
                    !watch.seen(&self.run_dir.console_log()) && started.elapsed() < timeout / 2
                }
                None => false,
            };
            if !waiting_for_marker {
                match vsock.connect(port, left.min(CONNECT_ATTEMPT_TIMEOUT)) {
                    Ok(stream) => return Ok(stream),
                    Err(e @ (ConnectError::NotListening { .. } | ConnectError::Timeout { .. })) => {
                        debug!("waiting for the guest: {e}");
                    }
                    Err(e) => return Err(VmError::Vsock(e)),
                }
            }
            // Sleeps, but wakes at once if the VMM exits.
            self.vmm
                .wait_timeout(RETRY_INTERVAL.min(left))
                .context(|| format!("waiting for {}", self.vmm.name()))?;
        }
    }

    /// Fails if the VMM or a helper has exited.
    fn check_alive(&mut self) -> Result<()> {
        let vmm_name = self.vmm.name().to_owned();
        if let Some(status) = self
            .vmm
            .try_wait()
            .context(|| format!("waiting for {vmm_name}"))?
        {
            let mut console = self.console_tail(CONSOLE_TAIL_LINES);
            let vmm_log = self.vmm.log_tail(5);
            if !vmm_log.is_empty() {
                console = format!("{console}\n{vmm_name}: {vmm_log}");
            }
            return Err(VmError::GuestExited {
                vmm: vmm_name,
                status: status.to_string(),
                console,
            });
        }
        for helper in &mut self.helpers {
            if let Some(status) = helper
                .try_wait()
                .context(|| format!("waiting for {}", helper.name()))?
            {
                return Err(VmError::HelperFailed {
                    name: helper.name().into(),
                    detail: format!("exited ({status}): {}", helper.log_tail(5)),
                });
            }
        }
        Ok(())
    }

    /// Opens another stream to a guest vsock port (the guest's side must be
    /// listening already).
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream> {
        Ok(self.vsock().connect(port, timeout)?)
    }

    /// The way in to the guest's vsock, for opening streams without
    /// holding the VM.
    pub fn vsock(&self) -> GuestVsock {
        GuestVsock::new(self.run_dir.vsock_uds())
    }

    /// Waits up to `timeout` for the guest to end (power-off, reset, panic).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let name = self.vmm.name().to_owned();
        self.vmm
            .wait_timeout(timeout)
            .context(|| format!("waiting for {name}"))
    }

    /// Ends the VM: waits up to `grace` for the guest to finish on its own
    /// (the caller has asked the agent to shut down), then kills the VMM and
    /// stops the helpers; a zero `grace` kills the VMM at once. Returns the VMM's exit status and whether it had to
    /// be killed. The run directory goes when the `MicroVm` is dropped.
    pub fn stop(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        let (status, killed) = match self.wait_exit(grace)? {
            Some(status) => (status, false),
            None if grace.is_zero() => {
                // A caller that gives no grace wants the VM gone now (its
                // helper died, say): nothing went wrong here.
                info!(
                    "{} (pid {}): killing it at once, as asked (no grace period)",
                    self.vmm.name(),
                    self.vmm.pid()
                );
                (self.vmm.kill().context(|| "killing the VMM".into())?, true)
            }
            None => {
                warn!(
                    "{} (pid {}) still running {grace:?} after shutdown; killing it; \
                     last console lines:\n{}",
                    self.vmm.name(),
                    self.vmm.pid(),
                    self.console_tail(CONSOLE_TAIL_LINES)
                );
                (self.vmm.kill().context(|| "killing the VMM".into())?, true)
            }
        };
        for helper in &mut self.helpers {
            let name = helper.name().to_owned();
            helper
                .terminate(HELPER_GRACE)
                .context(|| format!("stopping {name}"))?;
        }
        debug!("VM stopped: {status}");
        Ok((status, killed))
    }

    /// A descriptor that becomes readable when the VMM exits, for a thread
    /// that watches the VM without borrowing it.
    pub fn exit_notifier(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.vmm.exit_notifier()
    }

    /// For each helper (vhost-user daemon): its name and a descriptor that
    /// becomes readable when it exits. A VM whose helper died cannot go on
    /// (Linux waits for ever on the FUSE requests a dead virtiofsd had), so
    /// its watcher stops the VM.
    pub fn helper_exit_notifiers(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        self.helpers
            .iter()
            .map(|h| {
                Ok((
                    format!("{} (pid {})", h.name(), h.pid()),
                    h.exit_notifier()?,
                ))
            })
            .collect()
    }

    /// The last `lines` lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail_lines(&self.run_dir.console_log(), lines)
    }

    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    pub fn accelerator(&self) -> &'static str {
        self.accelerator
    }

    /// Launch to the agent's first accepted connection.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm.pid()
    }

    /// PIDs of the helper processes (vhost-user daemons).
    pub fn helper_pids(&self) -> Vec<u32> {
        self.helpers.iter().map(ManagedChild::pid).collect()
    }

    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    pub fn console_log(&self) -> PathBuf {
        self.run_dir.console_log()
    }
}
