//! Reading a policy and the files it references from disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_core::{Policy, PolicyError};

/// Largest referenced file read (keys, secrets, API key lists).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// A policy's text and every file it references, read once. This is what a runtime without
/// file access (the component, the Envoy filter) is handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyBundle {
    /// Where the policy came from (for messages).
    pub path: PathBuf,
    /// The policy text.
    pub text: String,
    /// Referenced files, keyed as written in the policy.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A load failure with the stable code to report.
#[derive(Debug)]
pub struct LoadError {
    /// `policy_syntax`, `policy_invalid`, `policy_file` or `policy_io`.
    pub code: &'static str,
    /// The full message (never contains secret values).
    pub error: anyhow::Error,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for LoadError {}

impl From<PolicyError> for LoadError {
    fn from(e: PolicyError) -> Self {
        LoadError { code: e.code(), error: e.into() }
    }
}

fn io(error: anyhow::Error) -> LoadError {
    LoadError { code: "policy_io", error }
}

/// Reads a policy or a file it references: regular files only, at most [`MAX_FILE_BYTES`].
pub fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::files::read_regular(path, MAX_FILE_BYTES).with_context(|| format!("cannot read {}", path.display()))
}

/// Files read on demand from a directory (the policy's), with the same size limit.
#[derive(Debug, Clone)]
pub struct DirFiles(pub PathBuf);

impl portcullis_core::FileSource for DirFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        read_limited(&self.0.join(path)).map_err(|e| format!("{e:#}"))
    }
}

/// The directory a policy's relative file references resolve against.
pub fn policy_dir(path: &Path) -> PathBuf {
    path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl PolicyBundle {
    /// Reads a policy file and the files it references (relative to the policy's directory).
    pub fn read(path: &Path) -> Result<PolicyBundle, LoadError> {
        let bytes = read_limited(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| io(anyhow::anyhow!("{} is not UTF-8", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files = BTreeMap::new();
        for name in Policy::referenced_files(&text)? {
            let full = dir.join(&name);
            let content = read_limited(&full).map_err(|e| LoadError {
                code: "policy_file",
                error: e.context(format!("referenced by {}", path.display())),
            })?;
            files.insert(name, content);
        }
        Ok(PolicyBundle { path: path.to_owned(), text, files })
    }

    /// Compiles the bundle natively.
    pub fn compile(&self) -> Result<Policy, LoadError> {
        Policy::load(&self.text, &self.files).map_err(|e| LoadError {
            code: e.code(),
            error: anyhow::Error::new(e).context(format!("in {}", self.path.display())),
        })
    }
}

/// Reads and compiles a policy file.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    PolicyBundle::read(path)?.compile()
}
