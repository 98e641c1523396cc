//! Pre-initialisation (wizer): a component whose linear memory already holds a compiled policy.
//!
//! The component is instrumented, instantiated once, asked to `install` the policy (parsing the
//! text, checking keys, building the route trie: the expensive part), and snapshotted. Every
//! instance of the snapshot starts with the policy ready, so a fresh instance per request costs
//! an instantiation from a copy-on-write memory image and one call, not a policy load.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use anyhow::bail;
use portcullis_core::NoRevocations;
use wasmtime::component::{Component, Instance, Linker, WasmList};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::policy_files::PolicyBundle;
use crate::runtime::{COMPONENT, HostState};

/// Returns the embedded component with `bundle`'s policy installed in its memory.
pub fn preinitialize(bundle: &PolicyBundle) -> anyhow::Result<Vec<u8>> {
    preinitialize_component(COMPONENT, bundle)
}

/// Returns `component` with `bundle`'s policy installed in its memory.
pub fn preinitialize_component(component: &[u8], bundle: &PolicyBundle) -> anyhow::Result<Vec<u8>> {
    snapshot_after(component, crate::runtime::linker, |store, instance| {
        let files = crate::runtime::files(bundle);
        let authz = crate::runtime::bindings_for(&mut *store, instance)?;
        let installed = authz
            .portcullis_authz_authorizer()
            .call_install(&mut *store, &bundle.text, &files)
            .context("install trapped")?;
        if let Err(e) = installed {
            let e = crate::runtime::load_error(&e);
            bail!("the policy did not load: [{}] {e}", e.code());
        }
        Ok(())
    })
}

/// What the Spin component's `install` refused, from its `[code] message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the component refused: [{code}] {message}")]
pub struct Refused {
    /// The stable code (`config_invalid`, `policy_invalid`, ...).
    pub code: String,
    /// What is wrong.
    pub message: String,
}

impl Refused {
    fn parse(text: &str) -> Refused {
        let parsed = text.strip_prefix('[').and_then(|t| t.split_once("] "));
        let (code, message) = parsed.unwrap_or(("runtime", text));
        Refused { code: code.to_owned(), message: message.to_owned() }
    }
}

/// The Spin component's `portcullis:spin/setup` export.
const SPIN_SETUP: &str = "portcullis:spin/setup@0.1.0";

/// Returns the Spin component (`guest/spin`, either world of `wit/spin/world.wit`) with
/// `bundle`'s policy installed in its memory, `settings` as its build-time defaults, and 32
/// fresh random bytes as the build's secret (see `guest/spin/src/signatures.rs`). Its
/// imports (WASI HTTP, Spin's variables and key-value store) are not called while installing,
/// so they are stubbed with traps here, except the one Rust's standard library calls on the
/// first `HashMap`: `wasi:random/insecure-seed`, answered from the OS's random source. (That
/// seed is then part of the image: every instance of one build shares it, as it shares the
/// policy; it keys only hash tables, never a secret.)
pub fn preinitialize_spin(
    component: &[u8],
    bundle: &PolicyBundle,
    settings: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    let linker = |engine: &Engine, compiled: &Component| {
        let mut linker = Linker::new(engine);
        // Under the exact name the component imports (the version follows Rust's std).
        let seeds: Vec<String> = compiled
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.starts_with("wasi:random/insecure-seed@0.2."))
            .collect();
        for name in seeds {
            linker.instance(&name)?.func_wrap("insecure-seed", |_, ()| -> wasmtime::Result<((u64, u64),)> {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| wasmtime::Error::msg(e.to_string()))?;
                let (a, b) = bytes.split_at(8);
                let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
                Ok(((word(a), word(b)),))
            })?;
        }
        linker.define_unknown_imports_as_traps(compiled)?;
        Ok(linker)
    };
    snapshot_after(component, linker, |store, instance| {
        let (_, setup) = instance
            .get_export(&mut *store, None, SPIN_SETUP)
            .with_context(|| format!("not a Portcullis Spin component: no `{SPIN_SETUP}` export"))?;
        let (_, install) =
            instance.get_export(&mut *store, Some(&setup), "install").context("no `install` in the setup export")?;
        type Install<'a> = (&'a str, &'a [crate::runtime::wit::PolicyFile], &'a [(String, String)], &'a [u8]);
        let install = instance.get_typed_func::<Install<'_>, (Result<(), String>,)>(&mut *store, install)?;
        let files = crate::runtime::files(bundle);
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the build's secret: {e}"))?;
        let (installed,) =
            install.call(&mut *store, (&bundle.text, &files, settings, &secret[..])).context("install trapped")?;
        installed.map_err(|e| Refused::parse(&e).into())
    })
}

/// Instruments `component`, instantiates it with `linker`, runs `install`, and snapshots it.
fn snapshot_after(
    component: &[u8],
    linker: impl FnOnce(&Engine, &Component) -> anyhow::Result<Linker<HostState>>,
    install: impl FnOnce(&mut Store<HostState>, &Instance) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument_component(component).context("cannot instrument the component")?;

    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).context("cannot configure wasmtime")?;
    let compiled = Component::new(&engine, &instrumented).context("cannot compile the instrumented component")?;
    let linker = linker(&engine, &compiled)?;
    let state = HostState::new(StoreLimitsBuilder::new().build(), Arc::new(NoRevocations), None);
    let mut store = Store::new(&engine, state);
    let instance = linker.instantiate(&mut store, &compiled).context("cannot instantiate the component")?;
    install(&mut store, &instance)?;

    let mut access = Access { store: &mut store, instance, error: None };
    let snapshot = block_on(wizer.snapshot_component(&cx, &mut access)).context("cannot snapshot the component")?;
    if let Some(e) = access.error {
        return Err(e.context("reading the instance's state for the snapshot failed"));
    }
    Ok(snapshot)
}

/// Drives a future that never waits (every call below is synchronous).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Reads the instrumented instance's state for the snapshot.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    /// The first failure: the trait has no error channel, so it is kept and reported after.
    error: Option<anyhow::Error>,
}

impl Access<'_> {
    fn call<R: wasmtime::component::Lift + 'static, O>(
        &mut self,
        instance: &str,
        func: &str,
        f: impl FnOnce(&Store<HostState>, R) -> O,
    ) -> O
    where
        O: Default,
    {
        let result = (|| -> anyhow::Result<O> {
            let (_, inst) =
                self.instance.get_export(&mut *self.store, None, instance).context("no wizer access instance")?;
            let (_, func) =
                self.instance.get_export(&mut *self.store, Some(&inst), func).context("no wizer access function")?;
            let typed = self.instance.get_typed_func::<(), (R,)>(&mut *self.store, func)?;
            let (r,) = typed.call(&mut *self.store, ())?;
            Ok(f(self.store, r))
        })();
        result.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            O::default()
        })
    }
}

impl ComponentInstanceState for Access<'_> {
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        let bytes = self.call(instance, func, |store, list: WasmList<u8>| list.as_le_slice(store).to_vec());
        contents(&bytes);
        std::future::ready(())
    }
    fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> impl Future<Output = i32> + Send {
        std::future::ready(self.call(instance, func, |_, r: i32| r))
    }
    fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> impl Future<Output = i64> + Send {
        std::future::ready(self.call(instance, func, |_, r: i64| r))
    }
    fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> impl Future<Output = u32> + Send {
        std::future::ready(self.call(instance, func, |_, r: f32| r.to_bits()))
    }
    fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> impl Future<Output = u64> + Send {
        std::future::ready(self.call(instance, func, |_, r: f64| r.to_bits()))
    }
}
