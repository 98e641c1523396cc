//! The host's one error type: a stable code and a message that never holds a secret. The CLI
//! prints it as `error[code]: message` (exit 2), a rejected reload logs both and keeps the
//! policy in force, startup fails with it. Codes: `policy_syntax`, `policy_invalid`,
//! `policy_file`, `policy_io`, `runtime`, `startup`, `usage`, `io`, `store_unavailable`,
//! `revocation_invalid`, `network` (the CLI prints them as `error[code]`; decision reasons are
//! another list, docs/reason-codes.md).

use portcullis_adapter::bundle::BundleError;
use portcullis_core::PolicyError;

use crate::revocation::StoreError;
use crate::runtime::{Fault, WorkerError};

/// A failure with its stable code.
#[derive(Debug)]
pub struct Error {
    code: &'static str,
    error: anyhow::Error,
}

impl Error {
    /// A failure with `code` (one of the module's list).
    pub fn new(code: &'static str, error: impl Into<anyhow::Error>) -> Error {
        Error { code, error: error.into() }
    }

    /// A failure with `code` and a plain message.
    pub fn msg(code: &'static str, message: impl std::fmt::Display) -> Error {
        Error { code, error: anyhow::anyhow!("{message}") }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The same failure, its message prefixed with `context`.
    #[must_use]
    pub fn context(self, context: impl std::fmt::Display + Send + Sync + 'static) -> Error {
        Error { code: self.code, error: self.error.context(context) }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Error {}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Error {
        Error::new(e.code(), e)
    }
}

impl From<BundleError> for Error {
    fn from(e: BundleError) -> Error {
        Error::new(e.code(), e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::msg(e.code(), e)
    }
}

impl From<Fault> for Error {
    fn from(e: Fault) -> Error {
        Error::new("runtime", e)
    }
}

impl From<WorkerError> for Error {
    fn from(e: WorkerError) -> Error {
        match e {
            WorkerError::Policy(e) => e,
            WorkerError::Fault(f) => f.into(),
        }
    }
}

/// An error and its causes on one line (`a: b: c`), for errors whose own message stops at the
/// top (`reqwest`, `tokio_postgres`: "error performing TLS handshake" without why).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.ends_with(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}
