use std::{io, path::PathBuf, time::Duration};

use crate::vsock::ConnectError;

/// Why a microVM could not be started, reached or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest kernel not found at {0}: build it with scripts/build-guest, or set its path in the config")]
    KernelMissing(PathBuf),
    #[error("guest initramfs not found at {0}: build it with scripts/build-guest, or set its path in the config")]
    InitrdMissing(PathBuf),
    #[error("{name} not found ({hint})")]
    HelperMissing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("invalid VM settings: {0}")]
    InvalidSpec(String),
    #[error("creating the VM's run directory under {dir}: {source}")]
    RunDir { dir: PathBuf, source: io::Error },
    #[error("starting {name}: {source}")]
    Spawn { name: String, source: io::Error },
    #[error("{name} did not come up: {detail}")]
    HelperFailed { name: String, detail: String },
    #[error("{vmm} exited ({status}) before the guest agent answered{}", console_tail(.console))]
    GuestExited {
        vmm: String,
        status: String,
        console: String,
    },
    #[error("the guest agent did not answer on vsock port {port} within {timeout:?}{}", console_tail(.console))]
    BootTimeout {
        port: u32,
        timeout: Duration,
        console: String,
    },
    #[error("hybrid vsock: {0}")]
    Vsock(ConnectError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn console_tail(console: &str) -> String {
    if console.trim().is_empty() {
        "; the guest console is empty".into()
    } else {
        format!("; last guest console lines:\n{console}")
    }
}

pub type Result<T> = std::result::Result<T, VmError>;

impl From<ConnectError> for VmError {
    fn from(e: ConnectError) -> Self {
        VmError::Vsock(e)
    }
}

pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| VmError::Io {
            context: context(),
            source,
        })
    }
}
