//! Firedoor's host side: finding the guest image, choosing a hypervisor
//! backend, and driving a sandbox VM through its agent.

pub mod assets;
pub mod backends;
pub mod sandbox;
