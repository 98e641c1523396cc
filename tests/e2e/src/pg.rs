//! A real, throwaway Postgres for tests: Debian's `postgresql` binaries, `initdb` into a temp
//! dir, `pg_ctl start` on 127.0.0.1 and a free port. Stopped and deleted on drop.
//!
//! [`Database::new`] uses `$DATABASE_URL` when it is set (a fresh database inside it, dropped
//! afterwards), else a cluster of its own. Tests that restart the server use
//! [`Cluster::start`] directly: nobody else's server is restarted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::TempDir;

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("Postgres is not installed: scripts/test.sh installs Debian's `postgresql`")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a Postgres tool, as the `postgres` user when we are root (Postgres refuses root).
fn tool(name: &str, args: &[&str]) -> Command {
    let bin = pg_bin().join(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Postgres server of our own.
#[derive(Debug)]
pub struct Cluster {
    dir: TempDir,
    port: u16,
    /// More server options (`-c name=value ...`).
    options: String,
}

impl Cluster {
    /// `initdb` and start (about a second).
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// [`Cluster::start`] with TLS on, its server certificate (for `127.0.0.1` and `localhost`)
    /// from `ca`. Plain connections are still accepted.
    pub fn start_tls(ca: &crate::tls::TestCa) -> Cluster {
        Cluster::start_with(Some(ca))
    }

    fn start_with(ca: Option<&crate::tls::TestCa>) -> Cluster {
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(ok.success(), "chown of the cluster directory failed");
        }
        let out = tool("initdb", &["-D", data.to_str().unwrap(), "--auth=trust", "-U", "postgres", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut options = String::new();
        if let Some(ca) = ca {
            let (cert, key) = ca.server_cert();
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            // Postgres refuses a key others can read.
            let ok = Command::new("chmod").arg("600").arg(data.join("server.key")).status().unwrap();
            assert!(ok.success());
            if is_root() {
                let ok = Command::new("chown")
                    .args(["postgres:postgres", "server.crt", "server.key"])
                    .current_dir(&data)
                    .status()
                    .unwrap();
                assert!(ok.success());
            }
            options = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c listen_addresses=127.0.0.1,127.0.0.2".into();
        }
        let c = Cluster { dir, port: free_port(), options };
        c.pg_ctl_start();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off{}",
            self.port,
            self.dir.path().display(),
            self.options,
        );
        let log = self.dir.path().join("postgres.log");
        let out = tool(
            "pg_ctl",
            &["-D", self.data().to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        )
        .stdout(Stdio::null())
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (`fast`: disconnects clients, like a real restart).
    pub fn stop(&self) {
        let out = tool("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts it again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// The connection URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = tool("pg_ctl", &["-D", self.data().to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A fresh database for one test: inside `$DATABASE_URL`'s server, or in a cluster of its own.
#[derive(Debug)]
pub struct Database {
    /// The test's database.
    pub url: String,
    admin_url: String,
    name: String,
    _cluster: Option<Cluster>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Database {
    /// Creates the database.
    pub async fn new() -> Database {
        let (admin_url, cluster) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => (url, None),
            None => {
                let c = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
                (c.url("postgres"), Some(c))
            }
        };
        let name = format!("portcullis_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let client = connect(&admin_url).await;
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let mut config: tokio_postgres::Config = admin_url.parse().unwrap();
        config.dbname(&name);
        let url = config_to_url(&config, &name);
        Database { url, admin_url, name, _cluster: cluster }
    }
}

fn config_to_url(c: &tokio_postgres::Config, db: &str) -> String {
    // Rebuilt as key=value, which tokio-postgres and the CLI both accept.
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let mut s = format!("host={host} port={port} dbname={db}");
    if let Some(u) = c.get_user() {
        s.push_str(&format!(" user={u}"));
    }
    if let Some(p) = c.get_password() {
        s.push_str(&format!(" password='{}'", String::from_utf8_lossy(p).replace('\'', "\\'")));
    }
    s
}

impl Drop for Database {
    fn drop(&mut self) {
        if self._cluster.is_some() {
            return; // the whole cluster goes
        }
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// A connected client (its connection driven in the background).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to the test database: {e}"),
        }
    }
}
