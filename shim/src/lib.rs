//! Firedoor's host side: the containerd shim v2 (`containerd-shim-firedoor-v2`),
//! the guest image lookup, backend choice, and a sandbox VM driven through
//! its agent.

pub mod assets;
pub mod backends;
pub mod child;
pub mod config;
pub mod error;
pub mod hooks;
pub mod mount;
pub mod network;
pub mod sandbox;
pub mod sandbox_api;
pub mod shimv2;
pub mod spec;
pub mod stdio;
pub mod task;
