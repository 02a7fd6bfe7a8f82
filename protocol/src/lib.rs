//! The Firedoor agent protocol, shared by the host (shim, CLI) and the guest
//! agent. Generated from `proto/agent.proto` at build time.

/// Messages (`CheckRequest`, `CheckResponse`, ...).
#[allow(warnings, clippy::all)] // generated code
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client (`AgentClient`) and server trait (`Agent`, `create_agent`).
#[allow(warnings, clippy::all)] // generated code
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The async ttrpc client (`AgentClient` on tokio), for the host: it sleeps
/// until the agent answers, where the sync client polls every 10 ms.
#[cfg(feature = "async-client")]
#[allow(warnings, clippy::all)] // generated code
pub mod agent_ttrpc_async {
    include!(concat!(env!("OUT_DIR"), "/async/agent_ttrpc.rs"));
}

#[cfg(feature = "netlink")]
pub mod netlink;
pub mod oci;
pub mod stdio;

/// Where the guest mounts the directory the host shares with it (virtio-fs):
/// each container's rootfs and bind-mount sources are below it.
pub const GUEST_SHARED_DIR: &str = "/run/firedoor/shared";

/// Below the shared directory (host and guest): the pod's volumes, one
/// directory per host source of a bind mount, shared once per pod whatever
/// the number of containers mounting it. No container id can take this name
/// (ids never start with '.').
pub const SHARED_VOLUMES_DIR: &str = ".volumes";

/// vsock port the agent listens on unless the kernel command line says otherwise.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// Guest path of the pod network namespace (a bind mount of its nsfs file),
/// made by the agent on first use. The shim rewrites a spec's host network
/// namespace path (CRI's CNI namespace, Docker's) to it; the pod's NICs live
/// in it.
pub const POD_NETNS_PATH: &str = "/run/firedoor/netns/pod";

/// The line the agent prints on the serial console, whatever its log level,
/// once it accepts connections on vsock `port`. The host waits for it before
/// connecting: connecting to a guest whose vsock driver is not up yet has
/// been seen to wedge vhost-device-vsock.
pub fn ready_marker(port: u32) -> String {
    format!("firedoor-agent: ready on vsock port {port}")
}

/// Kernel command-line keys the agent reads (`firedoor.port=2000`).
/// The exec (`args == [FAULT_TRIGGER]`) that fires the fault armed by
/// `firedoor.fault=`; without that parameter it is an ordinary exec of a
/// program that does not exist.
pub const FAULT_TRIGGER: &str = "/.firedoor-fault-trigger";

pub mod cmdline {
    /// vsock port of the agent's ttrpc server.
    pub const PORT: &str = "firedoor.port";
    /// Agent log level: error, warn, info, debug, trace.
    pub const LOG: &str = "firedoor.log";
    /// A fault for Firedoor's own tests to inject (`panic`, `exit`, `hang`):
    /// the agent arms it at boot and fires it on an exec of
    /// [`FAULT_TRIGGER`](super::FAULT_TRIGGER). Only the host's Firedoor
    /// config (`kernel_params`) can set it; see README, "Fault injection".
    pub const FAULT: &str = "firedoor.fault";

    /// The kernel parameter that puts the agent on vsock `port`.
    pub fn port_param(port: u32) -> String {
        format!("{PORT}={port}")
    }
}
