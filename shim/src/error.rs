//! The shim's error type: every Task API failure is one of these, and one
//! conversion turns it into the ttrpc status containerd reads.

use ttrpc::Code;

/// Why a Task API request failed; the variant is the status code.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the process or container is in the wrong
    /// state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The sandbox VM (or its agent) cannot serve the request.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    /// A host-side failure, with its whole context chain.
    #[error("{0:#}")]
    Internal(anyhow::Error),
    /// The agent refused or could not be reached; its status code (NOT_FOUND,
    /// INVALID_ARGUMENT, ...) goes through to containerd.
    #[error("{doing}: {}", describe(.error))]
    Agent { doing: String, error: ttrpc::Error },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    /// The status code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unavailable(_) => Code::UNAVAILABLE,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Internal(_) => Code::INTERNAL,
            ShimError::Agent {
                error: ttrpc::Error::RpcStatus(status),
                ..
            } => status.code(),
            ShimError::Agent { .. } => Code::UNAVAILABLE,
        }
    }

    /// Adds what we were doing in front of the message, keeping the code.
    pub fn context(self, doing: impl std::fmt::Display) -> ShimError {
        match self {
            ShimError::NotFound(m) => ShimError::NotFound(format!("{doing}: {m}")),
            ShimError::AlreadyExists(m) => ShimError::AlreadyExists(format!("{doing}: {m}")),
            ShimError::InvalidArgument(m) => ShimError::InvalidArgument(format!("{doing}: {m}")),
            ShimError::FailedPrecondition(m) => {
                ShimError::FailedPrecondition(format!("{doing}: {m}"))
            }
            ShimError::Unavailable(m) => ShimError::Unavailable(format!("{doing}: {m}")),
            ShimError::Unimplemented(m) => ShimError::Unimplemented(format!("{doing}: {m}")),
            ShimError::Internal(e) => ShimError::Internal(e.context(doing.to_string())),
            ShimError::Agent { doing: d, error } => ShimError::Agent {
                doing: format!("{doing}: {d}"),
                error,
            },
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

impl From<anyhow::Error> for ShimError {
    fn from(e: anyhow::Error) -> Self {
        ShimError::Internal(e)
    }
}

/// A ttrpc error as a person reads it.
pub fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("the guest agent is unreachable ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn variants_map_to_their_status_codes() {
        assert_eq!(
            status_of(ShimError::NotFound("container c not found".into())),
            (Code::NOT_FOUND, "container c not found".into())
        );
        assert_eq!(
            status_of(ShimError::FailedPrecondition("x".into())).0,
            Code::FAILED_PRECONDITION
        );
        let internal = ShimError::Internal(anyhow::anyhow!("root").context("outer"));
        assert_eq!(status_of(internal), (Code::INTERNAL, "outer: root".into()));
    }

    #[test]
    fn agent_errors_keep_the_agent_code_or_are_unavailable() {
        let refused = ShimError::Agent {
            doing: "starting the container".into(),
            error: ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no such c")),
        };
        assert_eq!(
            status_of(refused),
            (Code::NOT_FOUND, "starting the container: no such c".into())
        );
        let gone = ShimError::Agent {
            doing: "pausing".into(),
            error: ttrpc::Error::LocalClosed,
        };
        let (code, message) = status_of(gone);
        assert_eq!(code, Code::UNAVAILABLE);
        assert!(
            message.starts_with("pausing: the guest agent is unreachable"),
            "{message}"
        );
    }

    #[test]
    fn context_keeps_the_code() {
        let e = ShimError::Unavailable("the sandbox VM has exited".into()).context("starting");
        assert_eq!(
            status_of(e),
            (
                Code::UNAVAILABLE,
                "starting: the sandbox VM has exited".into()
            )
        );
    }
}
