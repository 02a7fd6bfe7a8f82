//! The pod's network in the guest: the host's `ConfigureNetwork` names each
//! guest NIC by its MAC (the host veth's, which the VMM gave the NIC); the
//! agent moves it from the guest's root network namespace into the pod
//! network namespace, names it, sets its MTU and addresses, brings it up,
//! then adds the routes. Everything is validated before anything changes.

use std::{fs::File, net::IpAddr, os::fd::AsRawFd, path::Path};

use firedoor_protocol::{
    agent::ConfigureNetworkRequest,
    netlink::{
        route::{
            address::{AddressAttribute, AddressMessage},
            link::{LinkAttribute, LinkFlags, LinkMessage},
            route::{
                RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
                RouteType,
            },
            AddressFamily, RouteNetlinkMessage,
        },
        RouteSocket, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    },
};
use log::info;
use nix::sched::{setns, CloneFlags};

use crate::{
    error::{AgentError, Result},
    namespaces,
};

/// Bounds on what the host may ask for (a pod has one or two NICs).
const MAX_INTERFACES: usize = 8;
const MAX_ADDRESSES: usize = 16;
const MAX_ROUTES: usize = 64;

/// One NIC as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    mac: [u8; 6],
    name: String,
    mtu: u32,
    addresses: Vec<(IpAddr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    device: String,
}

fn invalid(what: String) -> AgentError {
    AgentError::InvalidArgument(what)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `10.1.2.3/24` (IPv4 or IPv6).
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn valid_name(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn validate(req: &ConfigureNetworkRequest) -> Result<(Vec<Interface>, Vec<Route>)> {
    if req.interfaces.len() > MAX_INTERFACES || req.routes.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} interfaces, {} routes: at most {MAX_INTERFACES} and {MAX_ROUTES}",
            req.interfaces.len(),
            req.routes.len()
        )));
    }
    let mut interfaces: Vec<Interface> = Vec::new();
    for (i, nic) in req.interfaces.iter().enumerate() {
        let mac = parse_mac(&nic.mac)
            .ok_or_else(|| invalid(format!("interfaces[{i}].mac {:?}", nic.mac)))?;
        if !valid_name(&nic.name) || interfaces.iter().any(|n| n.name == nic.name) {
            return Err(invalid(format!(
                "interfaces[{i}].name {:?}: 1-15 of [A-Za-z0-9_.-], once",
                nic.name
            )));
        }
        if !(68..=65535).contains(&nic.mtu) {
            return Err(invalid(format!(
                "interfaces[{i}].mtu {} (68-65535)",
                nic.mtu
            )));
        }
        if nic.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(format!(
                "interfaces[{i}]: more than {MAX_ADDRESSES} addresses"
            )));
        }
        let addresses = nic
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| {
                parse_cidr(a)
                    .ok_or_else(|| invalid(format!("interfaces[{i}].addresses[{j}] {a:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        interfaces.push(Interface {
            mac,
            name: nic.name.clone(),
            mtu: nic.mtu,
            addresses,
        });
    }
    let routes = req
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let destination = match r.destination.as_str() {
                "" => None,
                d => Some(
                    parse_cidr(d)
                        .ok_or_else(|| invalid(format!("routes[{i}].destination {d:?}")))?,
                ),
            };
            let gateway = match r.gateway.as_str() {
                "" => None,
                g => Some(
                    g.parse::<IpAddr>()
                        .map_err(|_| invalid(format!("routes[{i}].gateway {g:?}")))?,
                ),
            };
            if destination.is_none() && gateway.is_none() {
                return Err(invalid(format!(
                    "routes[{i}]: a default route needs a gateway"
                )));
            }
            if !interfaces.iter().any(|n| n.name == r.device) {
                return Err(invalid(format!(
                    "routes[{i}].device {:?} is none of the interfaces",
                    r.device
                )));
            }
            Ok(Route {
                destination,
                gateway,
                device: r.device.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((interfaces, routes))
}

fn netlink(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.to_string();
    move |e| AgentError::Internal(format!("{what}: {e}"))
}

/// The links of the calling thread's namespace: (index, MAC).
fn links_by_mac(socket: &mut RouteSocket) -> Result<Vec<(u32, [u8; 6])>> {
    Ok(socket
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(netlink("listing links"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                    _ => None,
                })?;
                Some((link.header.index, mac))
            }
            _ => None,
        })
        .collect())
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Configures the pod network namespace at `pod_netns` (made if needed)
/// as `req` says.
pub fn configure(req: &ConfigureNetworkRequest, pod_netns: &Path) -> Result<()> {
    let (interfaces, routes) = validate(req)?;
    if interfaces.is_empty() {
        return Ok(());
    }
    namespaces::ensure_pod_netns(pod_netns)?;
    let netns = File::open(pod_netns)
        .map_err(|e| AgentError::internal(format!("opening {pod_netns:?}"), e))?;
    // From the guest's root namespace (where the NICs appear) into the pod's.
    let mut root = RouteSocket::open().map_err(netlink("opening a route socket"))?;
    let links = links_by_mac(&mut root)?;
    for nic in &interfaces {
        let index = links
            .iter()
            .find(|(_, mac)| *mac == nic.mac)
            .map(|(index, _)| *index)
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "no network card with MAC {} in the guest",
                    mac_string(&nic.mac)
                ))
            })?;
        let mut moved = LinkMessage::default();
        moved.header.index = index;
        moved
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        root.execute(RouteNetlinkMessage::SetLink(moved), 0)
            .map_err(netlink(format!(
                "moving {} into the pod network namespace",
                mac_string(&nic.mac)
            )))?;
    }
    // The rest inside the pod namespace, on a thread that enters it.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| AgentError::internal("entering the pod network namespace", e))?;
                configure_inside(&interfaces, &routes)
            })
            .join()
            .unwrap_or_else(|_| Err(AgentError::Internal("network setup panicked".into())))
    })?;
    for nic in &interfaces {
        info!(
            "pod network: {} ({}, mtu {}) {:?}",
            nic.name,
            mac_string(&nic.mac),
            nic.mtu,
            nic.addresses
        );
    }
    Ok(())
}

fn configure_inside(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    let mut socket = RouteSocket::open().map_err(netlink("opening a route socket"))?;
    let links = links_by_mac(&mut socket)?;
    let mut indexes = Vec::new();
    for nic in interfaces {
        let index = links
            .iter()
            .find(|(_, mac)| *mac == nic.mac)
            .map(|(index, _)| *index)
            .ok_or_else(|| {
                AgentError::Internal(format!(
                    "{} did not arrive in the pod network namespace",
                    mac_string(&nic.mac)
                ))
            })?;
        let mut set = LinkMessage::default();
        set.header.index = index;
        set.attributes.push(LinkAttribute::IfName(nic.name.clone()));
        set.attributes.push(LinkAttribute::Mtu(nic.mtu));
        socket
            .execute(RouteNetlinkMessage::SetLink(set), 0)
            .map_err(netlink(format!("naming {} and setting its MTU", nic.name)))?;
        for (ip, len) in &nic.addresses {
            let mut address = AddressMessage::default();
            address.header.family = family(ip);
            address.header.prefix_len = *len;
            address.header.index = index;
            address.attributes.push(AddressAttribute::Local(*ip));
            address.attributes.push(AddressAttribute::Address(*ip));
            socket
                .execute(
                    RouteNetlinkMessage::NewAddress(address),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(netlink(format!("adding {ip}/{len} to {}", nic.name)))?;
        }
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        socket
            .execute(RouteNetlinkMessage::SetLink(up), 0)
            .map_err(netlink(format!("bringing {} up", nic.name)))?;
        indexes.push((nic.name.as_str(), index));
    }
    // Replace, not add: a route the host's namespace has instead of the
    // one the kernel derives from an address (CNI's ptp plugin routes the
    // pod's subnet through the gateway) takes the derived one's place.
    for route in routes {
        let index = indexes
            .iter()
            .find(|(name, _)| *name == route.device)
            .map(|(_, index)| *index)
            .unwrap_or_default();
        socket
            .execute(
                RouteNetlinkMessage::NewRoute(route_message(route, index)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(netlink(format!("adding the route {route:?}")))?;
    }
    Ok(())
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

fn route_message(route: &Route, index: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    let ip_of_route = route
        .destination
        .map(|(ip, _)| ip)
        .or(route.gateway)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    message.header.address_family = family(&ip_of_route);
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.kind = RouteType::Unicast;
    message.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((ip, len)) = route.destination {
        message.header.destination_prefix_length = len;
        message
            .attributes
            .push(RouteAttribute::Destination(route_address(ip)));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(route_address(gateway)));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

#[cfg(test)]
mod tests {
    use firedoor_protocol::agent::{NetworkInterface, NetworkRoute};

    use super::*;

    fn request() -> ConfigureNetworkRequest {
        ConfigureNetworkRequest {
            interfaces: vec![NetworkInterface {
                mac: "0a:58:0a:00:00:05".into(),
                name: "eth0".into(),
                mtu: 1500,
                addresses: vec!["10.0.0.5/24".into()],
                ..Default::default()
            }],
            routes: vec![NetworkRoute {
                gateway: "10.0.0.1".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_request_parses() {
        let (interfaces, routes) = validate(&request()).unwrap();
        assert_eq!(interfaces[0].mac, [0x0a, 0x58, 0x0a, 0, 0, 5]);
        assert_eq!(interfaces[0].addresses, [("10.0.0.5".parse().unwrap(), 24)]);
        assert_eq!(routes[0].destination, None);
        assert_eq!(routes[0].gateway, Some("10.0.0.1".parse().unwrap()));
        let message = route_message(&routes[0], 3);
        assert_eq!(message.header.scope, RouteScope::Universe);
        assert_eq!(message.header.address_family, AddressFamily::Inet);
    }

    #[test]
    fn what_the_host_gets_wrong_is_refused_before_anything_changes() {
        type Change = Box<dyn Fn(&mut ConfigureNetworkRequest)>;
        let bad: Vec<Change> = vec![
            Box::new(|r| r.interfaces[0].mac = "0a:58:0a:00:00".into()),
            Box::new(|r| r.interfaces[0].mac = "zz:58:0a:00:00:05".into()),
            Box::new(|r| r.interfaces[0].name = "a-name-far-too-long".into()),
            Box::new(|r| r.interfaces[0].name = "eth/0".into()),
            Box::new(|r| r.interfaces[0].mtu = 20),
            Box::new(|r| r.interfaces[0].addresses = vec!["10.0.0.5/33".into()]),
            Box::new(|r| r.interfaces[0].addresses = vec!["10.0.0.5".into()]),
            Box::new(|r| r.interfaces[0].addresses = vec!["10.0.0.5/8".into(); 17]),
            Box::new(|r| r.routes[0].device = "eth1".into()),
            Box::new(|r| r.routes[0].gateway = String::new()),
            Box::new(|r| r.routes[0].gateway = "10.0.0.300".into()),
            Box::new(|r| r.interfaces = vec![r.interfaces[0].clone(); 9]),
        ];
        for (i, change) in bad.iter().enumerate() {
            let mut req = request();
            change(&mut req);
            let err = validate(&req).unwrap_err();
            assert!(matches!(err, AgentError::InvalidArgument(_)), "{i}: {err}");
        }
    }
}
