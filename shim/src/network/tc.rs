//! The tc plumbing between a veth and its tap: an ingress qdisc on each,
//! with one u32 filter that matches every frame and a mirred action that
//! redirects it to the egress of the other device. (u32, not matchall:
//! u32 is in every distribution kernel's default set, matchall is not.)

use std::io;

use firedoor_protocol::netlink::{
    route::{
        tc::{
            TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
            TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
            TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
        },
        RouteNetlinkMessage,
    },
    RouteSocket, NLM_F_CREATE, NLM_F_EXCL,
};

/// The preference of our filters: fixed, so that `shim delete` can tell
/// ours from anything else on an ingress qdisc.
pub const FILTER_PRIO: u16 = 0xfd00;
/// `htons(ETH_P_ALL)`, as `tcm_info` carries the protocol.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();
/// The ingress qdisc's handle `ffff:`.
pub const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

fn ingress_qdisc(index: u32) -> io::Result<TcMessage> {
    let mut qdisc = TcMessage::default();
    qdisc.header.index = i32::try_from(index).map_err(io::Error::other)?;
    qdisc.header.handle = INGRESS_HANDLE;
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
    Ok(qdisc)
}

/// Adds an ingress qdisc on `from` (which must have none) and a filter that
/// redirects every frame arriving there to the egress of `to`.
pub fn add_ingress_redirect(socket: &mut RouteSocket, from: u32, to: u32) -> io::Result<()> {
    socket.execute(
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)?),
        NLM_F_CREATE | NLM_F_EXCL,
    )?;
    let mut filter = TcMessage::default();
    filter.header.index = i32::try_from(from).map_err(io::Error::other)?;
    filter.header.parent = INGRESS_HANDLE;
    filter.header.info = (u32::from(FILTER_PRIO) << 16) | u32::from(ETH_P_ALL_BE);
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    // One key that masks nothing: matches every frame.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    socket.execute(
        RouteNetlinkMessage::NewTrafficFilter(filter),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes the ingress qdisc of `index` with every filter on it.
pub fn delete_ingress(socket: &mut RouteSocket, index: u32) -> io::Result<()> {
    socket.execute(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)?),
        0,
    )
}

/// Whether `index` has an ingress qdisc whose filters are all ours.
pub fn ingress_is_ours(socket: &mut RouteSocket, index: u32) -> bool {
    let Ok(ifindex) = i32::try_from(index) else {
        return false;
    };
    let mut request = TcMessage::default();
    request.header.index = ifindex;
    request.header.parent = INGRESS_HANDLE;
    let Ok(filters) = socket.dump(RouteNetlinkMessage::GetTrafficFilter(request)) else {
        return false;
    };
    let prios: Vec<u16> = filters
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == ifindex => {
                u16::try_from(f.header.info >> 16).ok()
            }
            _ => None,
        })
        .collect();
    !prios.is_empty() && prios.iter().all(|p| *p == FILTER_PRIO)
}
