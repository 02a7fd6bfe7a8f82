//! Errors of the agent API and their one mapping to ttrpc status codes.

use ttrpc::{Code, Error as TtrpcError};

/// What went wrong with a request; the variant picks the status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    /// The agent is shutting down.
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
            AgentError::Unavailable(_) => Code::UNAVAILABLE,
        }
    }

    /// An INTERNAL error naming what was being done.
    pub fn internal(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        AgentError::Internal(format!("{what}: {err}"))
    }
}

impl From<AgentError> for TtrpcError {
    fn from(err: AgentError) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

/// `error: cause: cause...`: libcontainer's errors keep the detail in their
/// sources.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_status_codes() {
        let err: TtrpcError = AgentError::NotFound("no container c1".into()).into();
        match err {
            TtrpcError::RpcStatus(status) => {
                assert_eq!(status.code(), Code::NOT_FOUND);
                assert_eq!(status.message(), "no container c1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chains_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("creating c1")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&err), "creating c1: disk on fire");
    }
}
