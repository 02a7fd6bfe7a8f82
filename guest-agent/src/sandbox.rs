//! Guest-wide setup for the pod: hostname, resolv.conf and hosts, the
//! virtio-fs share and further mounts.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use firedoor_protocol::{
    agent::{CreateSandboxRequest, Mount},
    oci::split_mount_options,
};
use log::{info, warn};
use nix::mount::{mount, umount2, MntFlags};

use crate::error::{AgentError, Result};

/// Where the sandbox's files and the share go.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    /// Mount point of the virtio-fs share (`/run/firedoor/shared`).
    pub shared_dir: PathBuf,
    /// Directory for `hosts` and `resolv.conf` (`/etc` in the guest).
    pub etc_dir: PathBuf,
}

#[derive(Debug)]
pub struct Sandbox {
    paths: SandboxPaths,
    /// Mounts made by CreateSandbox, in order; None before it.
    mounts: Mutex<Option<Vec<PathBuf>>>,
}

impl Sandbox {
    pub fn new(paths: SandboxPaths) -> Sandbox {
        Sandbox {
            paths,
            mounts: Mutex::new(None),
        }
    }

    pub fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        let mut made = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        if made.is_some() {
            return Err(AgentError::AlreadyExists(
                "the sandbox already exists".into(),
            ));
        }
        let mut mounts = Vec::new();
        let result = self.create_in(req, &mut mounts);
        if result.is_err() {
            unmount(&mounts);
        } else {
            *made = Some(mounts);
            info!("sandbox {} created", req.sandbox_id);
        }
        result
    }

    fn create_in(&self, req: &CreateSandboxRequest, mounts: &mut Vec<PathBuf>) -> Result<()> {
        if !req.hostname.is_empty() {
            let valid = req.hostname.len() <= 64
                && req
                    .hostname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(AgentError::InvalidArgument(format!(
                    "hostname {:?}: at most 64 of [A-Za-z0-9.-]",
                    req.hostname
                )));
            }
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| AgentError::internal("sethostname", e))?;
        }
        for (name, contents) in [("resolv.conf", &req.resolv_conf), ("hosts", &req.hosts)] {
            if !contents.is_empty() {
                let path = self.paths.etc_dir.join(name);
                fs::create_dir_all(&self.paths.etc_dir)
                    .and_then(|()| fs::write(&path, contents))
                    .map_err(|e| AgentError::internal(format!("writing {path:?}"), e))?;
            }
        }
        if !req.shared_fs_tag.is_empty() {
            // Not nosuid: the share holds the containers' rootfs, whose
            // setuid binaries work unless no_new_privs is on (as with runc).
            // Volumes get their own options from the container's spec.
            let share = Mount {
                source: req.shared_fs_tag.clone(),
                destination: self.paths.shared_dir.display().to_string(),
                fstype: "virtiofs".into(),
                options: vec!["nodev".into()],
                ..Default::default()
            };
            mounts.push(make_mount(&share, "shared_fs_tag")?);
        }
        for (i, m) in req.mounts.iter().enumerate() {
            mounts.push(make_mount(m, &format!("mounts[{i}]"))?);
        }
        Ok(())
    }

    /// Undoes CreateSandbox's mounts; the hostname and files stay.
    pub fn destroy(&self) {
        let mut made = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mounts) = made.take() {
            unmount(&mounts);
        }
    }
}

fn unmount(mounts: &[PathBuf]) {
    for target in mounts.iter().rev() {
        if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
            warn!("unmounting {target:?}: {e}");
        }
    }
}

fn make_mount(m: &Mount, what: &str) -> Result<PathBuf> {
    let target = Path::new(&m.destination);
    if !target.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "{what}.destination {:?}: not an absolute path",
            m.destination
        )));
    }
    let (flags, data) = split_mount_options(&m.options);
    fs::create_dir_all(target)
        .map_err(|e| AgentError::internal(format!("creating {target:?}"), e))?;
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        AgentError::Internal(format!(
            "{what}: mounting {} ({}) on {target:?}: {e}",
            m.source, m.fstype
        ))
    })?;
    Ok(target.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_destination_is_refused() {
        let m = Mount {
            source: "tmpfs".into(),
            destination: "relative".into(),
            fstype: "tmpfs".into(),
            ..Default::default()
        };
        let err = make_mount(&m, "mounts[0]").unwrap_err();
        assert!(matches!(err, AgentError::InvalidArgument(_)), "{err}");
    }
}
