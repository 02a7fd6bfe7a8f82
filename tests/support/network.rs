//! A CNI bridge network of a test's own for CRI pods (Debian's `bridge` +
//! `host-local` + `portmap`), shared by the pod network tests and the
//! network bench, and the pod IP the CRI reports.

use std::{fs, process::Command};

use k8s_cri::v1::PodSandboxStatusRequest;

use crate::{containerd::Containerd, cri::Cri};

/// The test's own bridge network, written before containerd's first pod
/// (containerd takes the first conflist by name: ours sorts before the
/// default ptp one). A bridge and a private /24 of the test's own, no
/// masquerade: nothing leaves the host. The bridge is removed on drop
/// (CNI DEL leaves it).
#[derive(Debug)]
pub struct BridgeNetwork {
    pub bridge: String,
    /// A host port of this test's own for `hostPort` mappings.
    pub host_port: u16,
    /// `10.A.B`: the /24 is `10.A.B.0/24`, the bridge (gateway) `.1`.
    pub prefix: String,
}

impl BridgeNetwork {
    pub fn install(ctrd: &Containerd) -> BridgeNetwork {
        // From the test directory's random name: tests side by side get
        // different bridges and ranges (10.208.0.0/13, apart from the
        // ptp network's 10.200.0.0/13).
        let seed = ctrd
            .dir()
            .to_string_lossy()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let bridge = format!("fdbr{:06x}", seed & 0xff_ffff);
        let prefix = format!("10.{}.{}", 208 + (seed >> 8) % 8, seed % 256);
        let conflist = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "firedoor-bridge-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "subnet": "{prefix}.0/24",
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{root}/cni/ipam-bridge"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
            root = ctrd.dir().display()
        );
        fs::write(
            ctrd.cni_conf_dir().join("10-firedoor-bridge.conflist"),
            conflist,
        )
        .unwrap();
        let host_port = 31000 + u16::try_from(seed % 2000).unwrap();
        BridgeNetwork {
            bridge,
            host_port,
            prefix,
        }
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The bridge's ports (veths of live pods).
    pub fn ports(&self) -> Vec<String> {
        fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for BridgeNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The pod's IP, as the CRI reports it (CNI's address on its eth0).
pub async fn pod_ip(cri: &mut Cri, pod: &str) -> String {
    let status = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e}"))
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(!ip.is_empty(), "pod {pod} has no IP");
    ip
}
