//! Reading a policy and the files it references from disk; assembling and compiling the bundle
//! is the shared adapter's (`portcullis_adapter::bundle`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_adapter::bundle::Bundle;
use portcullis_core::Policy;

/// Largest referenced file read (keys, secrets, API key lists).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// A policy's text and every file it references, read once from disk: the shared
/// [`Bundle`] (what a runtime without file access is handed) and the path it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyBundle {
    /// Where the policy came from (for messages).
    pub path: PathBuf,
    /// The text and the files.
    pub bundle: Bundle,
}

impl std::ops::Deref for PolicyBundle {
    type Target = Bundle;

    fn deref(&self) -> &Bundle {
        &self.bundle
    }
}

/// A load failure: `policy_syntax`, `policy_invalid`, `policy_file` or `policy_io`.
pub type LoadError = crate::error::Error;

fn io(error: anyhow::Error) -> LoadError {
    LoadError::new("policy_io", error)
}

/// A bundle in the inline form (`{"policy", "files"}`), for the Envoy filter's configuration.
pub fn inline_json(bundle: &Bundle) -> serde_json::Value {
    serde_json::json!({ "policy": bundle.text, "files": bundle.inline_files() })
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
        let name = path.display().to_string();
        let bundle =
            Bundle::assemble(&name, &text, |file| read_limited(&dir.join(file)).map_err(|e| format!("{e:#}")))?;
        Ok(PolicyBundle { path: path.to_owned(), bundle })
    }

    /// Compiles the bundle natively.
    pub fn compile(&self) -> Result<Policy, LoadError> {
        Ok(self.bundle.compile()?)
    }
}

/// Reads and compiles a policy file.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    PolicyBundle::read(path)?.compile()
}
