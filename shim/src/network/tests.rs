//! The pod network against a real network namespace (root only; skipped
//! otherwise). `ip` and `tc` set the namespace up and check the result
//! independently of our netlink code.

use std::process::Command;

use super::*;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of the test's own with a veth pair in it, one end
/// with an address and the default route on it, as CNI leaves a pod's.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> Option<TestNetns> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let name = format!("fd-unit-{}-{}", std::process::id(), rand_suffix());
        run(&["ip", "netns", "add", &name]);
        let netns = TestNetns { name };
        let n = netns.name.as_str();
        run(&[
            "ip", "-n", n, "link", "add", "vpod", "mtu", "1400", "type", "veth", "peer", "name",
            "vpeer",
        ]);
        run(&[
            "ip",
            "-n",
            n,
            "link",
            "set",
            "vpod",
            "address",
            "0a:58:0a:ff:00:05",
        ]);
        run(&["ip", "-n", n, "addr", "add", "10.255.0.5/24", "dev", "vpod"]);
        run(&["ip", "-n", n, "link", "set", "vpod", "up"]);
        run(&["ip", "-n", n, "link", "set", "vpeer", "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            "10.255.0.1",
        ]);
        Some(netns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["tc", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    fn nft_tables(&self) -> String {
        run(&["ip", "netns", "exec", &self.name, "nft", "list", "tables"])
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[test]
fn the_netns_comes_from_the_spec_network_entry_with_a_path() {
    let spec: Spec = serde_json::from_str(
        r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}"#,
    )
    .unwrap();
    assert_eq!(netns_path(&spec), Some("/var/run/netns/cni-1".into()));
    let fresh: Spec = serde_json::from_str(
        r#"{"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network"}]}}"#,
    )
    .unwrap();
    assert_eq!(netns_path(&fresh), None);
    assert!(!asks_for_host_network(&fresh));
    assert!(!asks_for_host_network(&spec));
    let host: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.2", "linux": {}}"#).unwrap();
    assert_eq!(netns_path(&host), None);
    assert!(asks_for_host_network(&host));
    assert!(asks_for_new_network(&fresh));
    assert!(!asks_for_new_network(&spec) && !asks_for_new_network(&host));
    // The shim's own namespace for a fresh one: then named by path.
    let mut made = fresh.clone();
    set_netns_path(&mut made, Path::new("/proc/42/ns/net"));
    assert_eq!(netns_path(&made), Some("/proc/42/ns/net".into()));
    assert!(!asks_for_new_network(&made));
}

#[test]
fn attach_joins_the_veth_to_a_tap_and_detach_removes_both_redirects() {
    let Some(netns) = TestNetns::new() else {
        return;
    };
    let network = PodNetwork::attach(&netns.path()).unwrap();
    let nics = network.vm_nics();
    assert_eq!(nics.len(), 1, "{network:?}");
    assert_eq!(nics[0].mac, [0x0a, 0x58, 0x0a, 0xff, 0x00, 0x05]);
    assert_eq!(nics[0].mtu, 1400);

    let config = network.guest_config();
    assert_eq!(config.interfaces.len(), 1);
    assert_eq!(config.interfaces[0].mac, "0a:58:0a:ff:00:05");
    assert_eq!(config.interfaces[0].name, "eth0");
    assert_eq!(config.interfaces[0].mtu, 1400);
    // The pod IP first, then the guest's end of the port-forward pair.
    assert_eq!(
        config.interfaces[0].addresses,
        ["10.255.0.5/24", "169.254.77.2/30"]
    );
    assert_eq!(config.routes.len(), 1, "{:?}", config.routes);
    assert_eq!(config.routes[0].destination, "");
    assert_eq!(config.routes[0].gateway, "10.255.0.1");
    assert_eq!(config.routes[0].device, "eth0");

    let tap = netns.ip(&["-d", "link", "show", "fdtap0"]);
    assert!(tap.contains("mtu 1400") && tap.contains("tap"), "{tap}");
    assert!(
        tap.contains("persist off"),
        "the tap must not outlive us: {tap}"
    );
    let to_tap = netns.tc(&["filter", "show", "dev", "vpod", "ingress"]);
    assert!(
        to_tap.contains("Egress Redirect to device fdtap0"),
        "{to_tap}"
    );
    let to_veth = netns.tc(&["filter", "show", "dev", "fdtap0", "ingress"]);
    assert!(
        to_veth.contains("Egress Redirect to device vpod"),
        "{to_veth}"
    );
    // Port forwarding: the guest's IPv4 and ARP for the tap's link-local
    // address go up the namespace's stack, ahead of the redirect.
    assert!(
        to_veth.contains("protocol ip pref 64767") && to_veth.contains("a9fe4d01/ffffffff at 16"),
        "{to_veth}"
    );
    assert!(
        to_veth.contains("protocol arp pref 64766") && to_veth.contains("a9fe4d01/ffffffff at 24"),
        "{to_veth}"
    );
    let tap_addresses = netns.ip(&["-o", "addr", "show", "dev", "fdtap0"]);
    assert!(
        tap_addresses.contains("inet 169.254.77.1/30"),
        "{tap_addresses}"
    );
    let localnet = run(&[
        "ip",
        "netns",
        "exec",
        &netns.name,
        "sysctl",
        "-n",
        "net.ipv4.conf.fdtap0.route_localnet",
        "net.ipv4.conf.vpod.route_localnet",
    ]);
    assert_eq!(localnet, "1\n0\n", "route_localnet on the tap only");
    let table = run(&[
        "ip",
        "netns",
        "exec",
        &netns.name,
        "nft",
        "list",
        "table",
        "ip",
        "firedoor_portfwd",
    ]);
    assert!(table.contains("dnat to 169.254.77.2"), "{table}");
    assert!(
        table.contains("oifname \"fdtap0\" ip saddr 127.0.0.0/8 snat to 169.254.77.1"),
        "{table}"
    );

    network.detach();
    let tables = netns.nft_tables();
    assert!(!tables.contains("firedoor_portfwd"), "{tables}");
    let qdiscs = netns.tc(&["qdisc", "show", "dev", "vpod"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    let links = netns.ip(&["link", "show"]);
    assert!(!links.contains("fdtap"), "{links}");
}

#[test]
fn clean_up_after_a_crash_removes_the_veths_redirect_but_nothing_else() {
    let Some(netns) = TestNetns::new() else {
        return;
    };
    // Someone else's ingress qdisc with a filter of its own stays.
    netns.tc(&["qdisc", "add", "dev", "vpeer", "ingress"]);
    netns.tc(&[
        "filter", "add", "dev", "vpeer", "parent", "ffff:", "protocol", "all", "prio", "7", "u32",
        "match", "u8", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vpod",
    ]);
    let network = PodNetwork::attach(&netns.path()).unwrap();
    // A killed shim and VMM: the descriptors close, nothing is detached.
    drop(network);
    let links = netns.ip(&["link", "show"]);
    assert!(!links.contains("fdtap"), "a closed tap goes away: {links}");
    assert!(netns
        .tc(&["qdisc", "show", "dev", "vpod"])
        .contains("ingress"));
    assert!(netns.nft_tables().contains("firedoor_portfwd"));
    // Someone else's table stays.
    run(&[
        "ip",
        "netns",
        "exec",
        &netns.name,
        "nft",
        "add",
        "table",
        "ip",
        "theirs",
    ]);

    clean_up(&netns.path());
    let tables = netns.nft_tables();
    assert!(!tables.contains("firedoor_portfwd"), "{tables}");
    assert!(tables.contains("table ip theirs"), "{tables}");
    let ours = netns.tc(&["qdisc", "show", "dev", "vpod"]);
    assert!(!ours.contains("ingress"), "{ours}");
    let theirs = netns.tc(&["filter", "show", "dev", "vpeer", "ingress"]);
    assert!(theirs.contains("pref 7"), "{theirs}");
}

#[test]
fn a_namespace_with_only_loopback_gives_no_nic() {
    if !is_root() {
        return;
    }
    let name = format!("fd-unit-lo-{}-{}", std::process::id(), rand_suffix());
    run(&["ip", "netns", "add", &name]);
    let network = PodNetwork::attach(&Path::new("/var/run/netns").join(&name));
    run(&["ip", "netns", "del", &name]);
    assert!(network.unwrap().is_empty());
}
