//! Regression tests for what a hostile client or a careless operator found: listeners held
//! open by idle or slow clients, policies pointing at devices and FIFOs, a SIGHUP that stopped
//! the service, secrets echoed in errors, a batch stopped by one bad line, a panic on a closed
//! stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::TempDir;
use portcullis_host::serve::listen::ConnectionLimits;
use portcullis_host::serve::{Config, Handle, Sidecar};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the binary with a deadline: a command that hangs fails the test instead of the run.
fn portcullis(args: &[&str], cwd: &Path, limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("`portcullis {}` still running after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

const HMAC_POLICY: &str = "version: 1\nissuers:\n  - issuer: https://hmac.example\n    audiences: [edge-api]\n    \
                           algorithms: [HS256]\n    jwks_file: JWKS\nroutes:\n  - {id: open, path: /open/**}\n";

fn policy_with_jwks(dir: &Path, jwks: &str) -> PathBuf {
    let p = dir.join("policy.yaml");
    std::fs::write(&p, HMAC_POLICY.replace("JWKS", jwks)).unwrap();
    p
}

#[test]
fn a_policy_referencing_a_device_or_a_fifo_is_refused_at_once() {
    let dir = TempDir::new("hostile-files");
    let d = dir.path();
    let mut targets = vec!["/dev/zero".to_owned()];
    let fifo = d.join("fifo.json");
    if Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        targets.push(fifo.display().to_string());
    }
    std::fs::create_dir_all(d.join("dir.json")).unwrap();
    targets.push("dir.json".into());
    for target in targets {
        let policy = policy_with_jwks(d, &target);
        let policy = policy.to_str().unwrap();
        for args in [vec!["check", "--policy", policy, "--engine", "native"], vec!["policy", "lint", policy]] {
            let out = portcullis(&args, d, Duration::from_secs(20));
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_ne!(out.status.code(), Some(0), "{target}: {args:?}");
            assert!(
                stderr.contains("not a regular file") || stdout.contains("not a regular file"),
                "{target} {args:?}: {stderr} {stdout}"
            );
        }
    }
}

#[test]
fn the_component_runs_under_a_4_gb_address_space_limit() {
    let token = std::fs::read_to_string(root().join("policies/demo.jwt")).unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v 4000000 && exec {bin} check --policy policies/example.yaml --now 1800000000 --token {}",
            token.trim()
        ))
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"allow\":true"));
}

#[test]
fn check_keeps_its_compiled_component_and_rebuilds_a_damaged_one() {
    let dir = TempDir::new("compile-cache");
    let cache = dir.path().join("cache");
    let token = std::fs::read_to_string(root().join("policies/demo.jwt")).unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--policy", "policies/example.yaml", "--now", "1800000000", "--token", token.trim()])
            .env("PORTCULLIS_CACHE_DIR", &cache)
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let artifacts = || -> Vec<PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect()
    };
    run();
    let stored = artifacts();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let good = std::fs::read(&stored[0]).unwrap();
    run();
    assert_eq!(std::fs::read(&stored[0]).unwrap(), good, "reused as it was");
    // Damaged: the run still decides, and leaves a good artifact again.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&stored[0], &bad).unwrap();
    run();
    assert_eq!(std::fs::read(&stored[0]).unwrap().len(), good.len());
    assert_ne!(std::fs::read(&stored[0]).unwrap(), bad, "rebuilt, not trusted");
}

#[test]
fn an_inline_secret_written_as_a_number_never_appears_in_a_message() {
    let dir = TempDir::new("hostile-secret");
    let p = dir.path().join("policy.yaml");
    std::fs::write(
        &p,
        "version: 1\nservice_tokens:\n  prefix: svc\n  audiences: [a]\n  keys:\n    - id: k\n      secret: 1234567890123456789\n",
    )
    .unwrap();
    let p = p.to_str().unwrap();
    for args in
        [vec!["check", "--policy", p], vec!["check", "--policy", p, "--engine", "native"], vec!["policy", "lint", p]]
    {
        let out = portcullis(&args, dir.path(), Duration::from_secs(60));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!all.contains("1234567890123456789"), "{args:?}: {all}");
        assert!(all.contains("secret"), "the path still says where: {all}");
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let token = std::fs::read_to_string(root().join("policies/demo.jwt")).unwrap();
    for args in [
        vec!["check", "--policy", "policies/example.yaml", "--engine", "native", "--token", token.trim()],
        vec!["policy", "lint", "policies/example.yaml"],
        vec!["policy", "schema"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .current_dir(root())
            .stdout(writer.try_clone().unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error[io]: cannot write to standard output"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_batch_line_that_is_not_utf8_is_answered_in_place_and_the_batch_goes_on() {
    let dir = TempDir::new("hostile-batch");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, b"{\"id\":1}\n\xff\xfe\n{\"id\":3}\n").unwrap();
    let policy = root().join("policies/example.yaml");
    let out = portcullis(
        &["check", "--policy", policy.to_str().unwrap(), "--engine", "native", "--batch", input.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "a bad line makes the batch exit 2");
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!((lines[1]["line"].as_u64(), lines[1]["error"]["code"].as_str()), (Some(2), Some("bad_request")));
    assert_eq!(lines[2]["id"], 3, "decided after the bad line");
}

/// Starts `portcullis serve` on port 0 and returns it with its admin address (from its log).
fn serve(dir: &Path, extra: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--policy", "policy.yaml", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--workers", "1", "--log-format", "json"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(a) = v["fields"]["admin_addr"].as_str()
            {
                let _ = tx.send(a.parse::<std::net::SocketAddr>().unwrap());
            }
        }
    });
    let admin = rx.recv_timeout(Duration::from_secs(120)).expect("the sidecar never said where it listens");
    (child, admin)
}

fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some((out.get(9..12)?.parse().ok()?, out))
}

fn metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = get(admin, "/metrics")?;
    body.lines().find(|l| l.starts_with(name))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn sighup_reloads_and_never_stops_the_service_even_with_reloading_off() {
    let dir = TempDir::new("hostile-hup");
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), "version: 1\nroutes:\n  - {id: open, path: /open/**, public: true}\n")
        .unwrap();
    let (mut child, admin) = serve(d, &["--reload-interval-ms", "0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(admin, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(admin, "portcullis_policy_generation"), Some(1.0));
    std::fs::write(d.join("policy.yaml"), "version: 1\nroutes:\n  - {id: other, path: /other/**, public: true}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(admin, "portcullis_policy_generation"), Some(1.0), "no reload without a signal");
    for _ in 0..3 {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped the sidecar");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each SIGHUP reloads, changed or not: three signals, three new generations.
    while metric(admin, "portcullis_policy_generation") != Some(4.0) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(admin, "/readyz").map(|r| r.0), Some(200));
    let _ = child.kill();
    let _ = child.wait();
}

async fn sidecar_with(limits: ConnectionLimits, admin: ConnectionLimits) -> (Handle, TempDir) {
    let dir = TempDir::new("hostile-listen");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroutes:\n  - {id: open, path: /open/**, public: true}\n").unwrap();
    let config = Config {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        check_limits: limits,
        admin_limits: admin,
        ..Config::local(policy)
    };
    (Sidecar::build(config).await.unwrap().serve().unwrap(), dir)
}

/// Reads until the peer closes; returns how long that took (or `None` past `limit`).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    portcullis_e2e::request(addr, "GET", path, "x", &[]).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_http_clients_are_cut_off() {
    let limits = ConnectionLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(400),
        idle_timeout: Some(Duration::from_millis(1500)),
    };
    let (h, _dir) = sidecar_with(limits, ConnectionLimits::ADMIN).await;
    let http = h.http_addr.unwrap();

    // Connects and says nothing.
    let mut silent = TcpStream::connect(http).await.unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(5)).await.expect("a silent client was never cut off");
    assert!(t < Duration::from_secs(2), "{t:?}");

    // Sends its headers a byte at a time (slowloris): cut off at the header deadline although
    // it never goes idle.
    let mut slow = TcpStream::connect(http).await.unwrap();
    let t = Instant::now();
    let mut cut = false;
    for b in
        b"GET /open/x HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(200)
    {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !cut {
        cut = closed_within(&mut slow, Duration::from_secs(2)).await.is_some();
    }
    assert!(cut && t.elapsed() < Duration::from_secs(4), "slow headers were not cut off ({:?})", t.elapsed());

    // Keep-alive: one request answered, then the idle connection is closed.
    let mut idle = TcpStream::connect(http).await.unwrap();
    idle.write_all(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await.is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert_eq!(http_get(http, "/open/x").await, 200, "the listener still serves");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_check_listener_leaves_the_admin_listener_reachable_and_recovers() {
    let limits = ConnectionLimits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Some(Duration::from_secs(30)),
    };
    let (h, _dir) = sidecar_with(limits, ConnectionLimits::ADMIN).await;
    let http = h.http_addr.unwrap();
    // 16 connections that keep the listener full (each sent half a request line).
    let mut hogs = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /open").await.unwrap();
        hogs.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A 17th check waits in the backlog...
    let waiting = tokio::spawn(async move { http_get(http, "/open/x").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the cap was not applied");
    // ...while the admin listener answers at once, and so does the gRPC listener's own cap.
    let t = Instant::now();
    assert_eq!(http_get(h.admin_addr, "/healthz").await, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    // One hog leaves: the waiting check is served.
    drop(hogs.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("never served").unwrap();
    assert_eq!(status, 200);
    drop(hogs);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_takes_as_many_headers_as_the_policy_allows() {
    let dir = TempDir::new("hostile-headers");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nlimits:\n  max_headers: 300\nroutes:\n  - {id: open, path: /open/**, public: true}\n",
    )
    .unwrap();
    let config = Config { http_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::local(policy) };
    let h = Sidecar::build(config).await.unwrap().serve().unwrap();
    let send = |n: usize| {
        let http = h.http_addr.unwrap();
        async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            let mut req = String::from("GET /open/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
            for i in 0..n {
                req.push_str(&format!("x-h{i}: v\r\n"));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            (out.get(9..12).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0), out)
        }
    };
    // 250 headers plus Host and Connection: over hyper's default 100, within the policy's 300.
    assert_eq!(send(250).await.0, 200);
    // Past the policy's limit the answer is the policy's own.
    let (status, out) = send(310).await;
    assert_ne!(status, 200, "{out}");
    assert!(out.to_ascii_lowercase().contains("x-portcullis-reason: malformed"), "{out}");
    h.shutdown().await;
}
