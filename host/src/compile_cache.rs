//! Compiled components kept on disk, so a command does not compile the component on every
//! start (`portcullis check` took 3.7 s, nearly all of it Cranelift).
//!
//! An artifact is named by the SHA-256 of the component bytes together with everything that
//! decides whether compiled code fits an engine (wasmtime's compatibility hash of the engine
//! settings, the wasmtime and Portcullis versions), and carries the SHA-256 of its own
//! contents. Loading recomputes that digest before wasmtime sees a byte; a file that is short,
//! whose digest differs (truncated, corrupted), or that wasmtime refuses for this engine is
//! deleted and compiled again, never used. Files are written to a temporary name and renamed
//! into place, so concurrent processes never read half an artifact.
//!
//! The directory: `$PORTCULLIS_CACHE_DIR`, else `$XDG_CACHE_HOME/portcullis`, else
//! `$HOME/.cache/portcullis`; `PORTCULLIS_CACHE_DIR=off` turns caching off. It is created
//! with mode 0700, and a directory that others may write to is not used: compiled code is
//! executed, so only its owner may place it there.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Largest artifact read.
const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// Artifacts kept per directory; older ones are removed when a new one is stored (fresh
/// isolation stores one per policy generation).
const KEEP: usize = 16;

/// What happened when a component was loaded through the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A valid artifact was loaded.
    Hit,
    /// No artifact: compiled and stored.
    Miss,
    /// An artifact was there but damaged or refused: removed, compiled and stored again.
    Rebuilt,
    /// No usable cache directory: compiled only.
    Off,
}

/// The default cache directory (see the module docs); `None` when caching is off or there is
/// no home directory.
pub fn default_dir() -> Option<PathBuf> {
    match std::env::var_os("PORTCULLIS_CACHE_DIR") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|x| PathBuf::from(x).join("portcullis"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("portcullis"))),
    }
}

/// The artifact's file name for `wasm` compiled by `engine`.
fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut settings = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut h = Sha256::new();
    h.update(wasm);
    h.update(settings.finish().to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("component-{hex}.cwasm")
}

/// Makes `dir` (mode 0700) and checks that nobody else may write to it.
fn usable_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is writable by others (mode {:o})", dir.display(), mode & 0o777),
            ));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Loads `wasm` compiled for `engine` from `dir`, or compiles it and stores the artifact.
/// Cache trouble never fails the load: it is logged, and the component is compiled.
pub fn load(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> wasmtime::Result<(Component, Outcome)> {
    let Some(dir) = dir else { return Ok((Component::new(engine, wasm)?, Outcome::Off)) };
    if let Err(e) = usable_dir(dir) {
        tracing::warn!(error = %e, "compiled-component cache not used");
        return Ok((Component::new(engine, wasm)?, Outcome::Off));
    }
    let path = dir.join(key(engine, wasm));
    let mut outcome = Outcome::Miss;
    match read_verified(&path) {
        Ok(Some(artifact)) => match deserialize(engine, &artifact) {
            Ok(c) => return Ok((c, Outcome::Hit)),
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "compiled component refused by this engine; rebuilding");
                outcome = Outcome::Rebuilt;
            }
        },
        Ok(None) => {}
        Err(why) => {
            tracing::warn!(error = %why, file = %path.display(), "compiled component damaged; rebuilding");
            outcome = Outcome::Rebuilt;
        }
    }
    if outcome == Outcome::Rebuilt {
        let _ = std::fs::remove_file(&path);
    }
    let artifact = engine.precompile_component(wasm)?;
    // Deserialized rather than compiled twice; the bytes are the ones just produced.
    let component = deserialize(engine, &artifact)?;
    if let Err(e) = store(&path, &artifact) {
        tracing::warn!(error = %e, file = %path.display(), "cannot store the compiled component");
    }
    prune(dir);
    Ok((component, outcome))
}

/// The artifact's payload when the file exists and its digest matches; `Err` when it exists
/// but is damaged.
fn read_verified(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let bytes = match crate::files::read_regular(path, MAX_ARTIFACT_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (digest, payload) = bytes.split_at_checked(32).ok_or("shorter than its digest")?;
    if Sha256::digest(payload)[..] != *digest {
        return Err("its digest does not match its contents".into());
    }
    Ok(Some(payload.to_vec()))
}

fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    // Unique per process and call: two writers never share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&Sha256::digest(artifact))?;
    f.write_all(artifact)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes all but the [`KEEP`] newest artifacts.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut artifacts: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("component-") && n.ends_with(".cwasm")))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    artifacts.sort_by_key(|a| std::cmp::Reverse(a.0));
    for (_, old) in artifacts.into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes were produced by `Engine::precompile_component`
    // (or `Component::serialize`) and not altered since. They are either bytes this engine
    // just produced, or a file that this user alone may write (the directory is 0700 and
    // checked), whose SHA-256 over the whole payload was written with it and has just been
    // verified; wasmtime itself then checks the header, its version and the engine settings.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        Engine::new(&c).unwrap()
    }

    /// The smallest component: compiles in milliseconds.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn an_artifact_is_stored_then_reused_and_a_damaged_one_rebuilt() {
        let dir = std::env::temp_dir().join(format!("portcullis-cc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = engine();
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Miss);
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Hit);
        let path = dir.join(key(&engine, EMPTY));

        // One flipped byte in the payload: the digest catches it before wasmtime sees it.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Rebuilt);
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Hit, "the rebuilt artifact is good");

        // Truncated to less than its digest.
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Rebuilt);

        // A well-formed file whose payload is not a compiled component for this engine.
        let junk = b"not a compiled component".to_vec();
        let mut file = Sha256::digest(&junk).to_vec();
        file.extend(&junk);
        std::fs::write(&path, &file).unwrap();
        assert_eq!(load(&engine, EMPTY, Some(&dir)).unwrap().1, Outcome::Rebuilt);

        // Another engine configuration has its own artifact.
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true).cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&c).unwrap();
        assert_ne!(key(&other, EMPTY), key(&engine, EMPTY));
        assert_eq!(load(&other, EMPTY, Some(&dir)).unwrap().1, Outcome::Miss);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_others_may_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("portcullis-cc-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(load(&engine(), EMPTY, Some(&dir)).unwrap().1, Outcome::Off);
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "nothing written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
