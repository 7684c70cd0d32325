//! Real nats-server processes for the JetStream tests: one server, or a cluster of servers with
//! JetStream on loopback, each in its own store directory, on ports the kernel hands out (a
//! server that loses a port to another program on this shared host is started again on new
//! ones). The binary is `$MAPSENTRY_NATS_SERVER`, else the one `e2e/nats/build-nats-server.sh`
//! built (or builds, once) into its cache.

use std::{
    fmt::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

/// The nats-server binary (built once per machine).
///
/// # Panics
/// When the build script fails (it says why: no Go, no network to the module proxy).
#[must_use]
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("MAPSENTRY_NATS_SERVER") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/build-nats-server.sh");
        let output = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            output.status
        );
        let path = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        PathBuf::from(path)
    })
    .clone()
}

/// A free loopback port (the kernel's choice; free when this returns, which a concurrent
/// program may change: servers are restarted on new ports when they lose one).
///
/// # Panics
/// When loopback cannot be bound.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// One server of a [`Nats`] set.
#[derive(Debug)]
struct Server {
    name: String,
    client_port: u16,
    cluster_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// nats-server processes with JetStream: one, or a cluster.
#[derive(Debug)]
pub struct Nats {
    servers: Vec<Server>,
    clustered: bool,
    /// Lines added to every server's configuration (e.g. `authorization { token: ... }`).
    extra: String,
}

impl Nats {
    /// One server with JetStream, storing under `dir`.
    #[must_use]
    pub fn single(dir: &Path) -> Self {
        Self::start(dir, 1)
    }

    /// One server with JetStream whose configuration also has `extra` (authorization, TLS).
    ///
    /// # Panics
    /// When the server does not start within 20 s.
    #[must_use]
    pub fn single_with(dir: &Path, extra: &str) -> Self {
        let mut nats = Self::start(dir, 1);
        extra.clone_into(&mut nats.extra);
        nats.kill9(0);
        nats.restart(0);
        nats
    }

    /// `n` servers in one JetStream cluster, storing under `dir`.
    #[must_use]
    pub fn cluster(dir: &Path, n: usize) -> Self {
        Self::start(dir, n)
    }

    /// One server with JetStream on client port `port` (which the caller chose, e.g. one a
    /// collector was already told to use).
    ///
    /// # Panics
    /// When the port is taken, or the server does not start within 20 s.
    #[must_use]
    pub fn single_on(dir: &Path, port: u16) -> Self {
        let mut nats = Self {
            servers: vec![Server {
                name: "n0".into(),
                client_port: port,
                cluster_port: 0,
                dir: dir.join("n0"),
                child: None,
                log: dir.join("n0.log"),
            }],
            clustered: false,
            extra: String::new(),
        };
        assert!(nats.launch(0), "port {port} was taken");
        nats
    }

    fn start(dir: &Path, n: usize) -> Self {
        for attempt in 0..5 {
            let mut nats = Self {
                servers: (0..n)
                    .map(|i| Server {
                        name: format!("n{i}"),
                        client_port: free_port(),
                        cluster_port: free_port(),
                        dir: dir.join(format!("n{i}")),
                        child: None,
                        log: dir.join(format!("n{i}.log")),
                    })
                    .collect(),
                clustered: n > 1,
                extra: String::new(),
            };
            let started = (0..n).all(|i| nats.launch(i));
            if started {
                return nats;
            }
            eprintln!("nats: a port was taken (attempt {attempt}); starting again on new ports");
            nats.stop_all();
        }
        panic!("could not start {n} nats-server(s) in 5 attempts");
    }

    /// Start server `i` (again, with the same ports and store); false when a port was taken.
    fn launch(&mut self, i: usize) -> bool {
        let config = self.config(i);
        let server = &mut self.servers[i];
        std::fs::create_dir_all(&server.dir).expect("nats store dir");
        let conf = server.dir.with_extension("conf");
        std::fs::write(&conf, config).expect("writing the nats config");
        let _ = std::fs::remove_file(&server.log);
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("Server is ready") {
                return true;
            }
            if log.contains("address already in use") {
                return false;
            }
            if let Some(child) = &mut server.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} exited ({status}) at start:\n{log}",
                    server.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} not ready within 20 s:\n{log}",
                server.name
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn config(&self, i: usize) -> String {
        let server = &self.servers[i];
        let mut text = String::new();
        let _ = writeln!(text, "server_name: {}", server.name);
        let _ = writeln!(text, "listen: 127.0.0.1:{}", server.client_port);
        let _ = writeln!(text, "log_file: \"{}\"", server.log.display());
        let _ = writeln!(text, "{}", self.extra);
        let _ = writeln!(
            text,
            "jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}",
            server.dir.display()
        );
        if self.clustered {
            let routes: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("nats-route://127.0.0.1:{}", s.cluster_port))
                .collect();
            let _ = writeln!(
                text,
                "cluster {{ name: mapsentry-test, listen: 127.0.0.1:{}, routes: [{}] }}",
                server.cluster_port,
                routes.join(", ")
            );
        }
        text
    }

    /// The client URL of every server, comma-separated (what `--jetstream` takes).
    #[must_use]
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of server `i` alone.
    #[must_use]
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// SIGKILL server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `i` again (same ports, same store).
    ///
    /// # Panics
    /// When its port was taken meanwhile, or it does not start within 20 s.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.launch(i),
            "nats-server {} could not get its port back",
            self.servers[i].name
        );
    }

    /// The process ids of the running servers (for their CPU time).
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref().map(Child::id))
            .collect()
    }

    /// Server `i`'s log so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }

    fn stop_all(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop_all();
    }
}
