//! The host side of a pod's network: the CNI network namespace containerd
//! made for the pod, and in it, for each CNI interface, a tap device joined
//! to the veth by two tc ingress filters that redirect every frame from one
//! to the other (veth -> tap, tap -> veth). The VM's NIC sits on the tap and
//! takes the veth's MAC, MTU and addresses (the agent configures it), so to
//! the pod's peers the VM is the pod.
//!
//! The tap is not persistent: it disappears with its last descriptor (the
//! shim's and the VMM's), so a SIGKILLed shim and VMM leave no tap. Its own
//! ingress qdisc goes with it. The veth's ingress qdisc is removed by
//! [`PodNetwork::detach`] when the sandbox stops, or by [`clean_up`] from
//! `shim delete` after a crash; CNI DEL then finds the namespace as it left
//! it.
//!
//! CRI PortForward reaches the guest through a link-local pair on the
//! first tap and a NAT table in the namespace ([`port_forward`]).

mod netns;
mod port_forward;
mod tap;
mod tc;

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use firedoor_hypervisor::VmNic;
use firedoor_protocol::{
    agent::{ConfigureNetworkRequest, NetworkInterface, NetworkRoute},
    netlink::{
        route::{
            address::{AddressAttribute, AddressMessage},
            link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage},
            route::{
                RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
            },
            AddressFamily, RouteNetlinkMessage,
        },
        RouteSocket,
    },
};
use log::{info, warn};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Names of our taps: `fdtap0`, `fdtap1`, ... (short and fixed: one pod per
/// network namespace).
pub const TAP_PREFIX: &str = "fdtap";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("entering the pod network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} in the pod network namespace: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error("creating tap device {name}: {source} (does the host have /dev/net/tun?)")]
    Tap {
        name: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, NetworkError>;

fn netlink_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// The host network namespace the pod's spec names (CRI's CNI namespace,
/// Docker's), if any: `None` for hostNetwork pods and for specs that ask
/// for a fresh namespace.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Whether the spec has no network namespace entry at all (hostNetwork,
/// `ctr run --net-host`), as opposed to one without a path (a fresh,
/// unconnected namespace: `ctr run`'s default).
pub fn asks_for_host_network(spec: &Spec) -> bool {
    !spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|namespaces| {
            namespaces
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Network)
        })
}

/// Whether the spec asks for a network namespace of its own, made by the
/// runtime (an entry without a path: `ctr run`'s default, Docker's): its
/// creator may configure it between create and start, through the pid
/// create reports, as it would with runc.
pub fn asks_for_new_network(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|namespaces| {
            namespaces
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none())
        })
}

/// Gives the spec's network namespace entry the path `netns` (the host
/// namespace the shim made for it).
pub fn set_netns_path(spec: &mut Spec, netns: &Path) {
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut());
    for ns in namespaces.into_iter().flatten() {
        if ns.typ() == LinuxNamespaceType::Network {
            ns.set_path(Some(netns.to_owned()));
        }
    }
}

/// One CNI interface joined to a tap.
#[derive(Debug)]
struct Attached {
    veth_index: u32,
    veth_name: String,
    tap: OwnedFd,
    tap_index: u32,
    tap_name: String,
    mac: [u8; 6],
    mtu: u32,
    /// IPv4 addresses and prefix lengths.
    addresses: Vec<(Ipv4Addr, u8)>,
}

/// An IPv4 route of the namespace through one of the interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// `None`: the default route.
    destination: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
    interface: usize,
}

/// The pod network as attached: the taps and what the guest must configure.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    /// The namespace itself, held open: detach must find it even when
    /// `netns` names a process that has ended (the hooks' anchor).
    netns_file: std::fs::File,
    nics: Vec<Attached>,
    routes: Vec<Route>,
    /// Whether CRI PortForward reaches the guest (on the first NIC).
    forwards_ports: bool,
}

/// The guest's name of the `i`th interface.
fn guest_name(i: usize) -> String {
    format!("eth{i}")
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl PodNetwork {
    /// Connects every CNI interface of the namespace at `netns` (a veth
    /// with an IPv4 address; loopback skipped) to a tap of its own. An
    /// empty namespace (no CNI interface) gives a network without NICs.
    /// On error nothing is left in the namespace.
    pub fn attach(netns: &Path) -> Result<PodNetwork> {
        let netns_file = netns::open(netns)?;
        let (nics, routes, forwards_ports) = netns::run_in_open(&netns_file, netns, || {
            let mut socket = RouteSocket::open().map_err(netlink_err("opening a route socket"))?;
            let found = find_interfaces(&mut socket)?;
            let mut nics = Vec::new();
            for (i, found) in found.into_iter().enumerate() {
                match connect(&mut socket, i, found) {
                    Ok(nic) => nics.push(nic),
                    Err(e) => {
                        for nic in &nics {
                            detach_one(&mut socket, nic);
                        }
                        return Err(e);
                    }
                }
            }
            let routes = match find_routes(&mut socket, &nics) {
                Ok(routes) => routes,
                Err(e) => {
                    for nic in &nics {
                        detach_one(&mut socket, nic);
                    }
                    return Err(e);
                }
            };
            let forwards_ports = match nics.first() {
                Some(first) => match forward_ports(&mut socket, first) {
                    Ok(on) => on,
                    Err(e) => {
                        for nic in &nics {
                            detach_one(&mut socket, nic);
                        }
                        return Err(e);
                    }
                },
                None => false,
            };
            Ok((nics, routes, forwards_ports))
        })?;
        for (i, nic) in nics.iter().enumerate() {
            info!(
                "pod network: {} ({}, mtu {}, {:?}) joined to {TAP_PREFIX}{i} by tc redirects",
                nic.veth_name,
                mac_string(&nic.mac),
                nic.mtu,
                nic.addresses,
            );
        }
        Ok(PodNetwork {
            netns: netns.to_owned(),
            netns_file,
            nics,
            routes,
            forwards_ports,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nics.is_empty()
    }

    /// The VM's NICs: the tap descriptors (owned by this network, valid
    /// until [`PodNetwork::detach`]), MACs and MTUs.
    pub fn vm_nics(&self) -> Vec<VmNic> {
        self.nics
            .iter()
            .map(|nic| VmNic {
                tap_fd: nic.tap.as_raw_fd(),
                mac: nic.mac,
                mtu: nic.mtu,
            })
            .collect()
    }

    /// What the agent must configure in the guest's pod network namespace.
    pub fn guest_config(&self) -> ConfigureNetworkRequest {
        let interfaces = self
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let mut addresses: Vec<String> = nic
                    .addresses
                    .iter()
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .collect();
                // After the pod IP, which stays the primary address.
                if i == 0 && self.forwards_ports {
                    addresses.push(format!(
                        "{}/{}",
                        port_forward::GUEST_ADDRESS,
                        port_forward::PREFIX_LEN
                    ));
                }
                NetworkInterface {
                    mac: mac_string(&nic.mac),
                    name: guest_name(i),
                    mtu: nic.mtu,
                    addresses,
                    ..Default::default()
                }
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .map(|r| NetworkRoute {
                destination: r
                    .destination
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .unwrap_or_default(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: guest_name(r.interface),
                ..Default::default()
            })
            .collect();
        ConfigureNetworkRequest {
            interfaces,
            routes,
            ..Default::default()
        }
    }

    /// Removes what [`PodNetwork::attach`] added: the port-forward table,
    /// the veths' ingress qdiscs (with their filters) and the taps. Call
    /// after the VM has exited.
    pub fn detach(self) {
        let PodNetwork {
            netns,
            netns_file,
            nics,
            forwards_ports,
            ..
        } = self;
        let result = netns::run_in_open(&netns_file, &netns, || {
            if forwards_ports {
                if let Err(e) = port_forward::remove() {
                    warn!(
                        "removing the port-forward table {}: {e}",
                        port_forward::NFT_TABLE
                    );
                }
            }
            let mut socket = RouteSocket::open().map_err(netlink_err("opening a route socket"))?;
            for nic in &nics {
                detach_one(&mut socket, nic);
            }
            Ok(())
        });
        // Closing the last descriptor removes the tap (and its qdisc).
        drop(nics);
        match result {
            Ok(()) => info!("pod network detached from {}", netns.display()),
            // The namespace is gone already (CNI DEL ran, or the pod was
            // removed by force): nothing of ours can be left in it.
            Err(e) => warn!("detaching the pod network: {e}"),
        }
    }
}

/// After a crash (`shim delete`): removes our port-forward table, our
/// taps and the ingress qdiscs whose filters are all ours from the
/// namespace at `netns`. A namespace that no longer exists is fine.
pub fn clean_up(netns: &Path) {
    if !netns.exists() {
        return;
    }
    let result = netns::run_in(netns, || {
        if let Err(e) = port_forward::remove() {
            warn!(
                "removing the port-forward table {}: {e}",
                port_forward::NFT_TABLE
            );
        }
        let mut socket = RouteSocket::open().map_err(netlink_err("opening a route socket"))?;
        for link in dump_links(&mut socket)? {
            let index = link.header.index;
            let name = link_name(&link).unwrap_or_default();
            if name.starts_with(TAP_PREFIX) {
                let _ = delete_link(&mut socket, index);
                continue;
            }
            if tc::ingress_is_ours(&mut socket, index) {
                if let Err(e) = tc::delete_ingress(&mut socket, index) {
                    warn!("removing the ingress qdisc of {name}: {e}");
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        warn!("cleaning up the pod network in {}: {e}", netns.display());
    }
}

/// A CNI interface before it is joined to a tap.
#[derive(Debug)]
struct Found {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    addresses: Vec<(Ipv4Addr, u8)>,
}

fn dump_links(socket: &mut RouteSocket) -> Result<Vec<LinkMessage>> {
    Ok(socket
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(netlink_err("listing links"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .collect())
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The namespace's Ethernet links that have an IPv4 address, in index order.
fn find_interfaces(socket: &mut RouteSocket) -> Result<Vec<Found>> {
    let mut address_request = AddressMessage::default();
    address_request.header.family = AddressFamily::Inet;
    let addresses: Vec<AddressMessage> = socket
        .dump(RouteNetlinkMessage::GetAddress(address_request))
        .map_err(netlink_err("listing addresses"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut found = Vec::new();
    for link in dump_links(socket)? {
        let name = link_name(&link).unwrap_or_default();
        if link.header.link_layer_type != LinkLayerType::Ether || name.starts_with(TAP_PREFIX) {
            continue;
        }
        let Some(mac) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        }) else {
            continue;
        };
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .unwrap_or(1500);
        let ipv4: Vec<(Ipv4Addr, u8)> = addresses
            .iter()
            .filter(|a| a.header.index == link.header.index)
            .filter_map(|a| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                    _ => None,
                })
            })
            .collect();
        if ipv4.is_empty() {
            continue;
        }
        found.push(Found {
            index: link.header.index,
            name,
            mac,
            mtu,
            addresses: ipv4,
        });
    }
    found.sort_by_key(|f| f.index);
    Ok(found)
}

/// Creates tap `i`, sized and up, and the two redirects between it and the
/// veth.
fn connect(socket: &mut RouteSocket, i: usize, found: Found) -> Result<Attached> {
    let tap_name = format!("{TAP_PREFIX}{i}");
    let tap = tap::open(&tap_name).map_err(|source| NetworkError::Tap {
        name: tap_name.clone(),
        source,
    })?;
    let tap_index = tap_index(socket, &tap_name)?;
    let mut up = LinkMessage::default();
    up.header.index = tap_index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    up.attributes.push(LinkAttribute::Mtu(found.mtu));
    socket
        .execute(RouteNetlinkMessage::SetLink(up), 0)
        .map_err(netlink_err(format!("setting {tap_name} up")))?;
    let nic = Attached {
        veth_index: found.index,
        veth_name: found.name,
        tap,
        tap_index,
        tap_name: tap_name.clone(),
        mac: found.mac,
        mtu: found.mtu,
        addresses: found.addresses,
    };
    let redirects = tc::add_ingress_redirect(socket, nic.veth_index, tap_index)
        .and_then(|()| tc::add_ingress_redirect(socket, tap_index, nic.veth_index));
    if let Err(e) = redirects {
        detach_one(socket, &nic);
        return Err(netlink_err(format!(
            "redirecting {} <-> {tap_name} (tc ingress qdisc, u32 filter, mirred)",
            nic.veth_name
        ))(e));
    }
    Ok(nic)
}

/// Sets up CRI PortForward through `first`'s tap: `Ok(false)` when the
/// NAT table cannot be made (no `nft`: the pod works, without port
/// forwarding); an error when the tap refuses its part (the table is
/// removed again).
fn forward_ports(socket: &mut RouteSocket, first: &Attached) -> Result<bool> {
    if let Err(e) = port_forward::add_nat(&first.tap_name) {
        warn!(
            "port forwarding into this pod is off: adding the nftables table {}: {e} \
             (install nftables for kubectl port-forward)",
            port_forward::NFT_TABLE
        );
        let _ = port_forward::remove();
        return Ok(false);
    }
    if let Err(e) = port_forward::add_to_tap(socket, first.tap_index, &first.tap_name) {
        let _ = port_forward::remove();
        return Err(netlink_err(format!(
            "adding the port-forward address {}/{} and filters to {}",
            port_forward::HOST_ADDRESS,
            port_forward::PREFIX_LEN,
            first.tap_name
        ))(e));
    }
    info!(
        "pod network: port forwarding through {} ({} <-> {})",
        first.tap_name,
        port_forward::HOST_ADDRESS,
        port_forward::GUEST_ADDRESS
    );
    Ok(true)
}

fn tap_index(socket: &mut RouteSocket, name: &str) -> Result<u32> {
    dump_links(socket)?
        .iter()
        .find(|l| link_name(l).as_deref() == Some(name))
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Tap {
            name: name.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not listed after creation"),
        })
}

fn delete_link(socket: &mut RouteSocket, index: u32) -> std::io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    socket.execute(RouteNetlinkMessage::DelLink(link), 0)
}

/// Removes the veth's ingress qdisc (the tap's goes with the tap).
fn detach_one(socket: &mut RouteSocket, nic: &Attached) {
    if let Err(e) = tc::delete_ingress(socket, nic.veth_index) {
        if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::EINVAL) {
            warn!("removing the ingress qdisc of {}: {e}", nic.veth_name);
        }
    }
}

/// The namespace's IPv4 routes (main table) through our interfaces, minus
/// those the kernel adds for an address (the guest's kernel adds them
/// too): directly connected ones first, so that a gateway is reachable
/// before a route through it is added.
fn find_routes(socket: &mut RouteSocket, nics: &[Attached]) -> Result<Vec<Route>> {
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let mut routes: Vec<Route> = socket
        .dump(RouteNetlinkMessage::GetRoute(request))
        .map_err(netlink_err("listing routes"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.kind == RouteType::Unicast
                && r.header.protocol != RouteProtocol::Kernel
        })
        .filter_map(|r| {
            let mut destination = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        destination = Some((*ip, r.header.destination_prefix_length));
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            let interface = nics.iter().position(|n| Some(n.veth_index) == oif)?;
            Some(Route {
                destination: destination.filter(|(_, len)| *len > 0),
                gateway,
                interface,
            })
        })
        .collect();
    routes.sort_by_key(|r| (r.gateway.is_some(), r.destination.is_none()));
    Ok(routes)
}

#[cfg(test)]
mod tests;
