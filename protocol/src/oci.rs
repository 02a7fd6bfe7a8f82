//! Facts about OCI specs and Linux mounts that the host and the agent both
//! need, written once.

use nix::mount::MsFlags;
use serde::de::DeserializeOwned;

/// Mount options that are mount(2) flags: name, flags, and whether the
/// option sets them (`ro`) or clears them (`rw`). Every other option is
/// passed to the filesystem as data.
pub const MOUNT_FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("bind", MsFlags::MS_BIND, true),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC), true),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("defaults", MsFlags::empty(), true),
];

/// Splits mount options into flags and the data string for mount(2); a
/// later option wins over an earlier one (`ro,rw` is read-write).
pub fn split_mount_options<S: AsRef<str>>(options: &[S]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.iter().map(AsRef::as_ref) {
        match MOUNT_FLAG_OPTIONS
            .iter()
            .find(|(name, _, _)| *name == option)
        {
            Some((_, flag, true)) => flags |= *flag,
            Some((_, flag, false)) => flags &= !*flag,
            None => data.push(option),
        }
    }
    (flags, data.join(","))
}

/// Whether an OCI mount is a bind mount: type `bind`, or a `bind` or
/// `rbind` option (runc's rule).
pub fn is_bind<'a>(fstype: Option<&str>, mut options: impl Iterator<Item = &'a str>) -> bool {
    fstype == Some("bind") || options.any(|o| o == "bind" || o == "rbind")
}

/// A path from /proc/self/mountinfo as it is: mountinfo escapes space,
/// tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (byte, octal) {
            (b'\\', Some(&[a, b, c])) => {
                out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
                i += 4;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An exec id for people: the init process has none.
pub fn display_exec(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}

/// JSON that does not fit the type, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.as_deref().unwrap_or("top level"))]
pub struct FieldError {
    /// The field, as `process.user.uid`; `None` for the document itself.
    pub path: Option<String>,
    /// What is wrong, with serde's line and column.
    pub message: String,
}

/// Parses JSON naming the field that is wrong (oci-spec's own errors only
/// say "serde failed").
pub fn from_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            path: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) =
            split_mount_options(&["ro", "nosuid", "lowerdir=/a:/b", "rw", "index=off"]);
        assert_eq!(flags, MsFlags::MS_NOSUID);
        assert_eq!(data, "lowerdir=/a:/b,index=off");
        let (flags, data) = split_mount_options(&["rbind", "defaults"]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(data, "");
    }

    #[test]
    fn bind_by_type_or_option() {
        assert!(is_bind(Some("bind"), std::iter::empty()));
        assert!(is_bind(None, ["ro", "rbind"].into_iter()));
        assert!(!is_bind(Some("tmpfs"), ["ro"].into_iter()));
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo("/run/a\\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct User {
            uid: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Process {
            user: User,
        }
        let err = from_json::<Process>(br#"{"user": {"uid": "root"}}"#).unwrap_err();
        assert_eq!(err.path.as_deref(), Some("user.uid"));
        assert!(
            err.to_string().starts_with("user.uid: invalid type"),
            "{err}"
        );
        let err = from_json::<Process>(b"[]").unwrap_err();
        assert_eq!(err.path, None);
        assert!(err.to_string().starts_with("top level: "), "{err}");
        let err = from_json::<Process>(b"{not json").unwrap_err();
        assert!(err.message.contains("line 1"), "{err}");
        assert_eq!(display_exec(""), "init");
        assert_eq!(display_exec("e1"), "e1");
    }
}
