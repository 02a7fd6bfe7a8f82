//! What CreateSandbox tells us about the pod. containerd's CRI passes the
//! pod's `runtime.v1.PodSandboxConfig` as the request's options; the shim
//! reads the few fields that shape the VM (hostname, annotations, the pod's
//! memory limit) with the wire format's own rules and skips the rest, so it
//! needs no copy of the CRI API.

use std::collections::HashMap;

use containerd_shim::protos::protobuf::{
    rt::WireType, well_known_types::any::Any, CodedInputStream,
};

use crate::sandbox::slot::FirstContainer;

/// The pod as far as the VM is concerned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PodRequest {
    pub hostname: String,
    /// The request's annotations, then the pod config's (`io.firedoor.vm.*`
    /// size the VM).
    pub annotations: HashMap<String, String>,
    /// `linux.resources.memory_limit_in_bytes`, rounded up to MiB.
    pub memory_limit_mib: Option<u32>,
    /// CreateSandbox's `netns_path`: the pod's network namespace (CNI's);
    /// none for a host-network pod.
    pub netns: Option<std::path::PathBuf>,
}

impl PodRequest {
    /// From CreateSandbox's annotations and options; options of another
    /// type than a CRI pod config are not ours to read and are ignored.
    pub fn new(
        annotations: &HashMap<String, String>,
        options: Option<&Any>,
    ) -> Result<PodRequest, String> {
        let mut pod = match options {
            Some(any) if is_pod_config(&any.type_url) => decode_pod_config(&any.value)
                .map_err(|e| format!("CreateSandbox options ({}): {e}", any.type_url))?,
            _ => PodRequest::default(),
        };
        for (key, value) in annotations {
            pod.annotations.insert(key.clone(), value.clone());
        }
        Ok(pod)
    }

    pub fn first_container(&self) -> FirstContainer {
        FirstContainer {
            memory_limit_mib: self.memory_limit_mib,
            hostname: self.hostname.clone(),
            netns: self.netns.clone(),
            host_network: self.netns.is_none(),
        }
    }
}

fn is_pod_config(type_url: &str) -> bool {
    type_url.ends_with("PodSandboxConfig")
}

/// Field numbers of CRI's api.proto (k8s.io/cri-api, runtime.v1).
mod field {
    pub const POD_HOSTNAME: u32 = 2;
    pub const POD_ANNOTATIONS: u32 = 7;
    pub const POD_LINUX: u32 = 8;
    pub const LINUX_RESOURCES: u32 = 5;
    pub const RESOURCES_MEMORY_LIMIT: u32 = 4;
    pub const MAP_KEY: u32 = 1;
    pub const MAP_VALUE: u32 = 2;
}

type WireResult<T> = Result<T, containerd_shim::protos::protobuf::Error>;

fn decode_pod_config(bytes: &[u8]) -> WireResult<PodRequest> {
    let mut pod = PodRequest::default();
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (number, wire_type) = unpack(tag);
        match (number, wire_type) {
            (field::POD_HOSTNAME, WireType::LengthDelimited) => {
                pod.hostname = input.read_string()?;
            }
            (field::POD_ANNOTATIONS, WireType::LengthDelimited) => {
                let (key, value) = decode_map_entry(&input.read_bytes()?)?;
                pod.annotations.insert(key, value);
            }
            (field::POD_LINUX, WireType::LengthDelimited) => {
                if let Some(limit) = decode_linux_memory_limit(&input.read_bytes()?)? {
                    pod.memory_limit_mib = Some(limit);
                }
            }
            _ => input.skip_field(wire_type)?,
        }
    }
    Ok(pod)
}

fn decode_linux_memory_limit(bytes: &[u8]) -> WireResult<Option<u32>> {
    let mut limit = None;
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (number, wire_type) = unpack(tag);
        if (number, wire_type) == (field::LINUX_RESOURCES, WireType::LengthDelimited) {
            limit = decode_memory_limit(&input.read_bytes()?)?;
        } else {
            input.skip_field(wire_type)?;
        }
    }
    Ok(limit)
}

fn decode_memory_limit(bytes: &[u8]) -> WireResult<Option<u32>> {
    let mut limit = None;
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (number, wire_type) = unpack(tag);
        if (number, wire_type) == (field::RESOURCES_MEMORY_LIMIT, WireType::Varint) {
            let bytes = input.read_int64()?;
            limit = u64::try_from(bytes)
                .ok()
                .filter(|b| *b > 0)
                .map(|b| u32::try_from(b.div_ceil(1 << 20)).unwrap_or(u32::MAX));
        } else {
            input.skip_field(wire_type)?;
        }
    }
    Ok(limit)
}

fn decode_map_entry(bytes: &[u8]) -> WireResult<(String, String)> {
    let (mut key, mut value) = (String::new(), String::new());
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match unpack(tag) {
            (field::MAP_KEY, WireType::LengthDelimited) => key = input.read_string()?,
            (field::MAP_VALUE, WireType::LengthDelimited) => value = input.read_string()?,
            (_, wire_type) => input.skip_field(wire_type)?,
        }
    }
    Ok((key, value))
}

/// A tag's field number and wire type (an unknown wire type is skipped as
/// the error `skip_field` gives it).
fn unpack(tag: u32) -> (u32, WireType) {
    (
        tag >> 3,
        WireType::new(tag & 7).unwrap_or(WireType::StartGroup),
    )
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::CodedOutputStream;

    use super::*;

    fn message(write: impl FnOnce(&mut CodedOutputStream)) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut bytes);
            write(&mut out);
            out.flush().unwrap();
        }
        bytes
    }

    /// A PodSandboxConfig as CRI encodes it: metadata, hostname, labels,
    /// annotations, linux { cgroup_parent, resources { cpu_shares,
    /// memory_limit_in_bytes } }.
    fn pod_config() -> Vec<u8> {
        let entry = |k: &str, v: &str| {
            message(|o| {
                o.write_string(1, k).unwrap();
                o.write_string(2, v).unwrap();
            })
        };
        let resources = message(|o| {
            o.write_int64(3, 1024).unwrap();
            o.write_int64(4, 200 * (1 << 20) + 1).unwrap();
        });
        let linux = message(|o| {
            o.write_string(1, "/kubepods").unwrap();
            o.write_bytes(5, &resources).unwrap();
        });
        message(|o| {
            o.write_bytes(1, &message(|m| m.write_string(1, "web").unwrap()))
                .unwrap();
            o.write_string(2, "web-0").unwrap();
            o.write_bytes(6, &entry("app", "web")).unwrap();
            o.write_bytes(7, &entry("io.firedoor.vm.vcpus", "2"))
                .unwrap();
            o.write_bytes(7, &entry("other", "x")).unwrap();
            o.write_bytes(8, &linux).unwrap();
        })
    }

    #[test]
    fn the_pod_config_gives_hostname_annotations_and_memory() {
        let any = Any {
            type_url: "runtime.v1.PodSandboxConfig".into(),
            value: pod_config(),
            ..Default::default()
        };
        let request_annotations = HashMap::from([("other".to_string(), "y".to_string())]);
        let pod = PodRequest::new(&request_annotations, Some(&any)).unwrap();
        assert_eq!(pod.hostname, "web-0");
        assert_eq!(pod.memory_limit_mib, Some(201));
        assert_eq!(
            pod.annotations,
            HashMap::from([
                ("io.firedoor.vm.vcpus".to_string(), "2".to_string()),
                ("other".to_string(), "y".to_string()),
            ])
        );
        assert_eq!(pod.first_container().hostname, "web-0");
    }

    #[test]
    fn other_options_are_ignored_and_garbage_is_an_error() {
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0xff; 4],
            ..Default::default()
        };
        assert_eq!(
            PodRequest::new(&HashMap::new(), Some(&runc)).unwrap(),
            PodRequest::default()
        );
        let truncated = Any {
            type_url: "runtime.v1.PodSandboxConfig".into(),
            value: pod_config()[..20].to_vec(),
            ..Default::default()
        };
        let err = PodRequest::new(&HashMap::new(), Some(&truncated)).unwrap_err();
        assert!(err.contains("CreateSandbox options"), "{err}");
    }
}
