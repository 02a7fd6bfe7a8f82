//! KVM state: the VM (memory slots, irqchip, PIT) and the vCPUs.

pub mod vcpu;
pub mod vm;
