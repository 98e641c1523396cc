//! Builds the guest component and embeds it, so the binary carries exactly the component its
//! tests ran. The nested cargo uses its own target directory (`target/guest`): it never waits on
//! the outer build's lock, and debug and release host builds share one guest build.
//! `PORTCULLIS_COMPONENT=/path/to/component.wasm` embeds a prebuilt component instead.

// A build script reports failure by panicking; cargo prints the message.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("portcullis.wasm");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMPONENT");
    if let Some(prebuilt) = std::env::var_os("PORTCULLIS_COMPONENT") {
        copy(Path::new(&prebuilt), &out);
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    for watched in [
        "guest/core/src",
        "guest/core/Cargo.toml",
        "guest/component/src",
        "guest/component/Cargo.toml",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("guest");
    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "portcullis-component", "--target", "wasm32-wasip2", "--profile", "guest"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // The outer build's flags and wrappers are for the host target, not the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "building the guest component failed ({other:?}); is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2, or run scripts/test.sh)"
        ),
    }
    copy(&target_dir.join("wasm32-wasip2/guest/portcullis_component.wasm"), &out);
}

/// Installs the `wasm32-wasip2` standard library through rustup when it is missing, so the first
/// `cargo run` on a machine with only the default toolchain works. A `rust-toolchain.toml`
/// listing the target is not enough: rustup skips installing it when `RUSTUP_AUTO_INSTALL=0`
/// (checked), and an explicit `rustup target add` is what every setting allows.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc).args(["--print", "target-libdir", "--target", "wasm32-wasip2"]).output();
    let installed = match libdir {
        Ok(o) if o.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            std::fs::read_dir(&dir).is_ok_and(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
            })
        }
        _ => false,
    };
    if installed {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (the guest component needs it)");
    match Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status() {
        Ok(s) if s.success() => {}
        other => {
            println!("cargo:warning=`rustup target add wasm32-wasip2` failed ({other:?}); install the target by hand")
        }
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("cannot copy the guest component {} to {}: {e}", from.display(), to.display());
    }
}
