//! # A small Spin-like host
//!
//! Runs a WASI HTTP 0.2 component the way Spin does: a fresh instance for every request (from a
//! pre-instantiated component, memory from its copy-on-write image), `wasi:http` from
//! `wasmtime-wasi-http`, and Spin's own `fermyon:spin/variables@2.0.0` and
//! `fermyon:spin/key-value@2.0.0` from Spin's published WIT (`wit/spin/deps/spin@2.0.0`), with
//! the key-value store shared by every instance as Spin's is.
//!
//! No Spin binary can be installed on the machines that run our CI, so this is how the Spin
//! component is tested end to end and measured; `wasmtime serve` runs its Spin-free build.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use hyper::server::conn::http1;
use tokio::net::TcpListener;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/spin",
        world: "portcullis:spin/spin-platform",
        with: { "fermyon:spin/key-value.store": super::StoreHandle },
    });
}

use bindings::fermyon::spin::key_value::{self, Error as KvError};
use bindings::fermyon::spin::variables::{self, Error as VarError};

/// Every key-value store of the application: label → key → value.
pub type KeyValue = Arc<Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>>;

/// An open store, as the guest holds it.
#[derive(Debug)]
pub struct StoreHandle {
    label: String,
}

/// How the host runs the component.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Application variables (Spin's `[variables]`, already resolved).
    pub variables: BTreeMap<String, String>,
    /// The key-value store labels the component may open (Spin's `key_value_stores`).
    pub stores: Vec<String>,
    /// One instance per connection, reused for its requests, instead of Spin's fresh instance
    /// per request: the warm baseline benchmarks compare against.
    pub warm: bool,
    /// Spin's service chaining, emulated: an outbound request to `http://<name>` (for example
    /// `app.spin.internal`) goes to the server at the address given, standing in for the
    /// application's component of that name (which Spin would run in process).
    pub chained: BTreeMap<String, SocketAddr>,
}

/// Outbound HTTP as Spin routes it: chained names to their stand-ins, the rest as
/// `wasmtime-wasi-http` sends it.
struct Hooks {
    chained: BTreeMap<String, SocketAddr>,
}

impl wasmtime_wasi_http::WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let to = request.uri().host().and_then(|h| self.chained.get(h)).copied();
        if let Some(addr) = to {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
            if let Ok(uri) = format!("http://{addr}{path}").parse() {
                *request.uri_mut() = uri;
            }
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}

/// A running host; stops when dropped.
#[derive(Debug)]
pub struct SpinHost {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The key-value stores, shared with every instance.
    pub key_value: KeyValue,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SpinHost {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    pre: ProxyPre<State>,
    options: Options,
    key_value: KeyValue,
}

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    table: ResourceTable,
    shared: Arc<Shared>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl variables::Host for State {
    fn get(&mut self, name: String) -> Result<String, VarError> {
        self.shared.options.variables.get(&name).cloned().ok_or(VarError::Undefined(name))
    }
}

impl key_value::Host for State {}

impl key_value::HostStore for State {
    fn open(&mut self, label: String) -> Result<Resource<StoreHandle>, KvError> {
        if !self.shared.options.stores.contains(&label) {
            return Err(KvError::AccessDenied);
        }
        self.table.push(StoreHandle { label }).map_err(|e| KvError::Other(e.to_string()))
    }

    fn get(&mut self, store: Resource<StoreHandle>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.with_store(&store, |s| s.get(&key).cloned())
    }

    fn set(&mut self, store: Resource<StoreHandle>, key: String, value: Vec<u8>) -> Result<(), KvError> {
        self.with_store(&store, |s| {
            s.insert(key, value);
        })
    }

    fn delete(&mut self, store: Resource<StoreHandle>, key: String) -> Result<(), KvError> {
        self.with_store(&store, |s| {
            s.remove(&key);
        })
    }

    fn exists(&mut self, store: Resource<StoreHandle>, key: String) -> Result<bool, KvError> {
        self.with_store(&store, |s| s.contains_key(&key))
    }

    fn get_keys(&mut self, store: Resource<StoreHandle>) -> Result<Vec<String>, KvError> {
        self.with_store(&store, |s| s.keys().cloned().collect())
    }

    fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl State {
    fn with_store<R>(
        &mut self,
        store: &Resource<StoreHandle>,
        f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R,
    ) -> Result<R, KvError> {
        let label = &self.table.get(store).map_err(|e| KvError::Other(e.to_string()))?.label;
        let mut all = self.shared.key_value.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(f(all.entry(label.clone()).or_default()))
    }
}

/// The engine: pooling allocation and copy-on-write memory images, as Spin configures it.
fn engine() -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling.total_component_instances(64).total_core_instances(256).total_memories(256).total_tables(256);
    pooling.max_memory_size(64 << 20);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config)
}

/// Compiles `component` and serves it on 127.0.0.1 (an ephemeral port), a fresh instance per
/// request.
pub async fn start(component: &[u8], options: Options) -> wasmtime::Result<SpinHost> {
    let engine = engine()?;
    let component = Component::new(&engine, component).context("cannot compile the component")?;
    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    variables::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    key_value::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let key_value = KeyValue::default();
    let shared = Arc::new(Shared { pre, options, key_value: key_value.clone() });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let warm = if shared.options.warm { Some(Arc::new(tokio::sync::Mutex::new(None))) } else { None };
                let service = hyper::service::service_fn(move |req| {
                    let (shared, warm) = (shared.clone(), warm.clone());
                    async move {
                        match warm {
                            Some(w) => handle_warm(shared, &w, req).await,
                            None => handle(shared, req).await,
                        }
                    }
                });
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(conn), service).await;
            });
        }
    });
    Ok(SpinHost { addr, key_value, server })
}

fn new_store(shared: &Arc<Shared>) -> Store<State> {
    let state = State {
        wasi: WasiCtx::builder().inherit_stderr().build(),
        http: WasiHttpCtx::new(),
        hooks: Hooks { chained: shared.options.chained.clone() },
        table: ResourceTable::new(),
        shared: shared.clone(),
    };
    Store::new(shared.pre.engine(), state)
}

/// A connection's instance, kept between its requests (see [`Options::warm`]).
type Warm = tokio::sync::Mutex<Option<(Store<State>, wasmtime_wasi_http::p2::bindings::Proxy)>>;

async fn handle_warm(
    shared: Arc<Shared>,
    warm: &Warm,
    req: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let mut slot = warm.lock().await;
    if slot.is_none() {
        let mut store = new_store(&shared);
        let proxy = shared.pre.instantiate_async(&mut store).await?;
        *slot = Some((store, proxy));
    }
    let Some((store, proxy)) = slot.as_mut() else { wasmtime::bail!("no instance") };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    // The whole call runs before the answer is taken: the body is complete by then (fine for
    // the small bodies benchmarks send).
    proxy.wasi_http_incoming_handler().call_handle(&mut *store, req, out).await?;
    Ok(receiver.await??)
}

async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = new_store(&shared);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = shared.pre.clone();
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => match task.await {
            Ok(Ok(())) => wasmtime::bail!("the component never answered"),
            Ok(Err(e)) => Err(e.context("the component failed before answering")),
            Err(e) => Err(e.into()),
        },
    }
}
