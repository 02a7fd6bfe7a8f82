//! vhost-user device daemons the backends start beside the VMM: waiting for
//! their socket, and virtiofsd for the shared directory (one way of starting
//! it, whichever VMM connects to it).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    backend::{Launch, RunDir, VmSpec},
    process::ManagedChild,
    Result, VmError,
};

pub const VIRTIOFSD: &str = "virtiofsd";

/// How long a vhost-user daemon may take to create its socket.
const HELPER_START_TIMEOUT: Duration = Duration::from_secs(5);

/// The vhost-user socket of the VM's virtiofsd.
pub fn fs_socket(run_dir: &RunDir) -> PathBuf {
    run_dir.path().join("virtiofsd.sock")
}

/// Starts virtiofsd sharing `shared_dir` on [`fs_socket`], supervised like
/// every helper (a [`ManagedChild`]: killed with its parent, log in the run
/// directory). `virtiofsd` is `None` when it was not found.
pub fn start_virtiofsd(
    virtiofsd: Option<&Path>,
    shared_dir: &Path,
    run_dir: &RunDir,
) -> Result<ManagedChild> {
    let virtiofsd = virtiofsd.ok_or(VmError::HelperMissing {
        name: VIRTIOFSD,
        hint: "needed for a shared directory; install it with: cargo install --locked virtiofsd@1.14.0",
    })?;
    start_vhost_user_daemon(
        VIRTIOFSD,
        Command::new(virtiofsd)
            .arg("--socket-path")
            .arg(fs_socket(run_dir))
            .arg("--shared-dir")
            .arg(shared_dir)
            // Container rootfs and volumes are bind mounts inside the
            // share: give each its own device in the guest.
            .arg("--announce-submounts")
            .args(["--cache", "auto", "--log-level", "warn"]),
        &fs_socket(run_dir),
        run_dir,
    )
}

/// Finishes a launch the same way for every backend: virtiofsd for the
/// shared directory (if the spec has one) beside the `helpers` already
/// running, then the VMM itself, which connects to their sockets as it
/// starts. Whatever was started is stopped if a later step fails.
pub(crate) fn launch_vmm(
    mut helpers: Vec<ManagedChild>,
    virtiofsd: Option<&Path>,
    spec: &VmSpec,
    run_dir: &RunDir,
    vmm_name: &str,
    vmm: &mut Command,
) -> Result<Launch> {
    if let Some(shared_dir) = &spec.shared_dir {
        helpers.push(start_virtiofsd(virtiofsd, shared_dir, run_dir)?);
    }
    let vmm = ManagedChild::spawn(vmm_name, vmm, Some(&run_dir.log(vmm_name)))?;
    Ok(Launch { vmm, helpers })
}

/// Starts a vhost-user device daemon and waits until its socket exists: the
/// VMM fails at once if the socket is not there yet.
pub fn start_vhost_user_daemon(
    name: &str,
    cmd: &mut Command,
    socket: &Path,
    run_dir: &RunDir,
) -> Result<ManagedChild> {
    let mut daemon = ManagedChild::spawn(name, cmd, Some(&run_dir.log(name)))?;
    let deadline = Instant::now() + HELPER_START_TIMEOUT;
    while !socket.exists() {
        let exited = daemon
            .wait_timeout(Duration::from_millis(5))
            .map_err(|e| helper_failed(name, e.to_string()))?;
        if let Some(status) = exited {
            return Err(helper_failed(
                name,
                format!("exited ({status}): {}", daemon.log_tail(5)),
            ));
        }
        if Instant::now() > deadline {
            return Err(helper_failed(
                name,
                format!(
                    "no socket at {} after {HELPER_START_TIMEOUT:?}",
                    socket.display()
                ),
            ));
        }
    }
    Ok(daemon)
}

fn helper_failed(name: &str, detail: String) -> VmError {
    VmError::HelperFailed {
        name: name.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_virtiofsd_says_how_to_install_it() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let err = start_virtiofsd(None, Path::new("/srv"), &run_dir)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cargo install --locked virtiofsd"), "{err}");
    }

    #[test]
    fn a_daemon_that_exits_at_once_is_reported_with_its_log() {
        let run_dir = RunDir::create(&std::env::temp_dir(), None).unwrap();
        let err = start_vhost_user_daemon(
            "fake",
            Command::new("/bin/sh").args(["-c", "echo no such option >&2; exit 3"]),
            &run_dir.path().join("never.sock"),
            &run_dir,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("no such option"), "{err}");
    }
}
