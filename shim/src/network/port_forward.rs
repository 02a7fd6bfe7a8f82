//! CRI PortForward (`kubectl port-forward`) into the VM. containerd
//! enters the pod's network namespace on the host and dials
//! `localhost:PORT` there (tcp4 first, then tcp6); with every frame of the
//! veth redirected to the VM, nothing listens on that loopback. So, for
//! any port and without knowing the ports in advance:
//!
//! - a link-local pair between the namespace and the guest:
//!   [`HOST_ADDRESS`] on the first tap, [`GUEST_ADDRESS`] beside the pod IP
//!   on the guest's `eth0` (in the guest's pod network namespace, where the
//!   pod's servers listen on `0.0.0.0`);
//! - two u32 filters on the tap's ingress, ahead of the redirect to the
//!   veth, that match the guest's IPv4 packets and ARP frames for
//!   [`HOST_ADDRESS`] and have no action, so those frames go up the
//!   namespace's own stack (a filter without actions classifies as
//!   `TC_ACT_OK`; no `gact` module needed);
//! - an nftables table of ours in the namespace: TCP to 127.0.0.1 is
//!   DNATed to [`GUEST_ADDRESS`] (same port), and SNATed to
//!   [`HOST_ADDRESS`] on its way out of the tap;
//! - `route_localnet` on the tap only, so that a packet from 127.0.0.1
//!   may be routed out of it (and its answer, turned back to 127.0.0.1 by
//!   conntrack, in).
//!
//! The address, the filters and the sysctl belong to the tap and go with
//! it. The table is removed by [`remove`] (from `PodNetwork::detach`, and
//! from `network::clean_up` after a crash); a table left behind by a killed
//! shim does not disturb CNI DEL (it names no interface) and goes with the
//! namespace.

use std::{io, net::Ipv4Addr, process::Command, time::Duration};

use firedoor_protocol::netlink::{
    route::{
        address::{AddressAttribute, AddressMessage},
        tc::{
            TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcU32Key, TcU32Selector,
            TcU32SelectorFlags,
        },
        AddressFamily, RouteNetlinkMessage,
    },
    RouteSocket, NLM_F_CREATE, NLM_F_EXCL,
};

use super::tc::{FILTER_PRIO, INGRESS_HANDLE};
use crate::child::{run_with_deadline, Finished, RunError};

/// The namespace's end of the link-local pair, on the tap. 169.254.77.0/30
/// is clear of the link-local addresses in common use (169.254.169.254
/// metadata, 169.254.1.1 Calico's gateway, 169.254.170.2 ECS).
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The guest's end, on its first NIC.
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
pub const PREFIX_LEN: u8 = 30;

/// Our nftables table (family `ip`) in the pod's namespace.
pub const NFT_TABLE: &str = "firedoor_portfwd";

/// The pass filters' preferences: ahead of (lower than) the redirect's.
const PASS_IPV4_PRIO: u16 = FILTER_PRIO - 1;
const PASS_ARP_PRIO: u16 = FILTER_PRIO - 2;
// Both addresses in one /30, and the pass filters before the redirect.
const _: () = assert!(
    u32::from_be_bytes(HOST_ADDRESS.octets()) >> (32 - PREFIX_LEN)
        == u32::from_be_bytes(GUEST_ADDRESS.octets()) >> (32 - PREFIX_LEN)
        && PASS_IPV4_PRIO < FILTER_PRIO
        && PASS_ARP_PRIO < FILTER_PRIO
);
/// `htons(ETH_P_IP)`, `htons(ETH_P_ARP)`, as `tcm_info` carries them.
const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();
const ETH_P_ARP_BE: u16 = 0x0806_u16.to_be();
/// Offsets from the network header: the IPv4 destination, and the ARP
/// target protocol address (Ethernet/IPv4 ARP: 8 bytes of header, sender
/// MAC and IP, target MAC).
const IPV4_DESTINATION_OFFSET: i32 = 16;
const ARP_TARGET_IP_OFFSET: i32 = 24;

/// The ruleset, in `nft -f` syntax.
fn ruleset(tap_name: &str) -> String {
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr 127.0.0.1 meta l4proto tcp dnat to {GUEST_ADDRESS}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\toifname \"{tap_name}\" ip saddr 127.0.0.0/8 snat to {HOST_ADDRESS}\n\
         \t}}\n\
         }}\n"
    )
}

/// The longest one `nft` run may take: a hung `nft` fails the pod's
/// network setup (or teardown) instead of stalling it for ever.
const NFT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs `nft -f -` on `script` in the calling thread's network namespace
/// (a child inherits the namespaces of the thread that forks it).
///
/// The `nft` binary, not netlink: the one nftables netlink crate
/// (rustables) is GPL-3.0, which an Apache-2.0 shim cannot take, and the
/// others wrap libnftnl (GPL-2.0) or this same binary. Debian's `nftables`
/// package; without it port forwarding is off and the pod works otherwise.
fn nft(script: &str) -> io::Result<()> {
    let finished = run_until(nft_command(), &["-f", "-"], script, NFT_DEADLINE)?;
    finished
        .check()
        .map_err(|e| io::Error::other(format!("nft: {e}")))
}

/// Runs `cmd args` with `input` on its stdin, for at most `deadline`; an
/// error names the command line.
fn run_until(
    mut cmd: Command,
    args: &[&str],
    input: &str,
    deadline: Duration,
) -> io::Result<Finished> {
    let command_line = format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "));
    cmd.args(args);
    run_with_deadline(&mut cmd, input.as_bytes(), deadline).map_err(|e| {
        let kind = match &e {
            RunError::Start(source) | RunError::Wait(source) => source.kind(),
            RunError::Watch(_) => io::ErrorKind::Other,
            RunError::DeadlineExpired { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, format!("`{command_line}`: {e}"))
    })
}

/// `nft`, from its Debian place when the shim's PATH (containerd's) lacks
/// the sbin directories.
fn nft_command() -> Command {
    let sbin = std::path::Path::new("/usr/sbin/nft");
    Command::new(if sbin.exists() {
        sbin
    } else {
        std::path::Path::new("nft")
    })
}

/// Adds the NAT table for the tap `tap_name` (in the calling thread's
/// namespace). First of the steps: the one that fails when `nft` is
/// missing, before anything else is added.
pub fn add_nat(tap_name: &str) -> io::Result<()> {
    nft(&ruleset(tap_name))
}

/// Adds [`HOST_ADDRESS`], `route_localnet` and the two pass filters to the
/// tap (which has its ingress qdisc already).
pub fn add_to_tap(socket: &mut RouteSocket, tap_index: u32, tap_name: &str) -> io::Result<()> {
    let mut address = AddressMessage::default();
    address.header.family = AddressFamily::Inet;
    address.header.prefix_len = PREFIX_LEN;
    address.header.index = tap_index;
    address.attributes = vec![
        AddressAttribute::Local(HOST_ADDRESS.into()),
        AddressAttribute::Address(HOST_ADDRESS.into()),
    ];
    socket.execute(
        RouteNetlinkMessage::NewAddress(address),
        NLM_F_CREATE | NLM_F_EXCL,
    )?;
    // /proc/sys/net is the namespace of the thread that opens it.
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{tap_name}/route_localnet"),
        "1",
    )?;
    add_pass_filter(
        socket,
        tap_index,
        PASS_IPV4_PRIO,
        ETH_P_IP_BE,
        IPV4_DESTINATION_OFFSET,
    )?;
    add_pass_filter(
        socket,
        tap_index,
        PASS_ARP_PRIO,
        ETH_P_ARP_BE,
        ARP_TARGET_IP_OFFSET,
    )
}

/// A u32 filter on the ingress of `index` for frames of `protocol` whose
/// 32 bits at `offset` are [`HOST_ADDRESS`]: classified, no action, so
/// they go up the stack instead of on to the next filter (the redirect).
fn add_pass_filter(
    socket: &mut RouteSocket,
    index: u32,
    prio: u16,
    protocol: u16,
    offset: i32,
) -> io::Result<()> {
    let mut filter = TcMessage::default();
    filter.header.index = i32::try_from(index).map_err(io::Error::other)?;
    filter.header.parent = INGRESS_HANDLE;
    filter.header.info = (u32::from(prio) << 16) | u32::from(protocol);
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    let mut key = TcU32Key::default();
    // The kernel compares network-order words; the crate writes these in
    // host order, so the network-order bytes go in as a native word.
    key.mask = u32::MAX;
    key.val = u32::from_ne_bytes(HOST_ADDRESS.octets());
    key.off = offset;
    selector.keys = vec![key];
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(TcHandle {
                major: INGRESS_HANDLE.major,
                minor: 1,
            })),
            TcOption::U32(TcFilterU32Option::Selector(selector)),
        ]),
    ];
    socket.execute(
        RouteNetlinkMessage::NewTrafficFilter(filter),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes our table from the calling thread's namespace; a table that is
/// not there (or no `nft`) is fine.
pub fn remove() -> io::Result<()> {
    // `destroy` (nft >= 1.0.8) would ignore a missing table; Debian 12 has
    // 1.0.6, so list first.
    let listed = run_until(
        nft_command(),
        &["list", "table", "ip", NFT_TABLE],
        "",
        NFT_DEADLINE,
    );
    match listed {
        Ok(finished) if finished.status.success() => nft(&format!("delete table ip {NFT_TABLE}\n")),
        // A hung `nft` is worth telling; a missing one or table is not.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_dnats_loopback_tcp_to_the_guest_and_snats_on_the_tap() {
        let rules = ruleset("fdtap0");
        assert!(rules.contains("table ip firedoor_portfwd"), "{rules}");
        assert!(
            rules.contains("ip daddr 127.0.0.1 meta l4proto tcp dnat to 169.254.77.2"),
            "{rules}"
        );
        assert!(
            rules.contains("oifname \"fdtap0\" ip saddr 127.0.0.0/8 snat to 169.254.77.1"),
            "{rules}"
        );
    }

    #[test]
    fn a_hung_nft_is_killed_at_its_deadline_with_an_error_naming_it() {
        // `sleep` stands in for an `nft` that never ends.
        let err = run_until(
            Command::new("sleep"),
            &["100"],
            "",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("`sleep 100`")
                && message.contains("200ms")
                && message.contains("killed"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_nft_keeps_its_not_found_kind() {
        let err = run_until(
            Command::new("/nonexistent/nft"),
            &["-f", "-"],
            "",
            NFT_DEADLINE,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/nonexistent/nft -f -"), "{err}");
    }
}
