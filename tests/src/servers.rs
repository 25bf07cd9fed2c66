//! Servers the tests talk to over TCP: moto (a local EC2 API), a counting HTTP server, a hung
//! endpoint, and a proxy that lets a test act at an exact point of a driver's HTTP
//! conversation.

use serde_json::Value;
use std::process::Command;

/// A free TCP port on 127.0.0.1 (bound, then released for a server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1")
        .port()
}

const MOTO_INSTALL: &str = "pip install 'moto[server]'";

/// A moto server (a local EC2 API and more) on 127.0.0.1, stopped (killed) when dropped.
/// Tests that need it fail loudly, naming the pip command, when moto is not installed.
pub struct Moto {
    pub port: u16,
    child: std::process::Child,
}

impl Moto {
    pub fn start() -> Moto {
        let check = Command::new("python3")
            .args(["-c", "import moto.server, boto3, flask"])
            .output();
        assert!(
            check.as_ref().is_ok_and(|o| o.status.success()),
            "moto is not installed: run `{MOTO_INSTALL}` ({check:?})"
        );
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto ({MOTO_INSTALL}): {e}"));
        let mut moto = Moto { port, child };
        let started = std::time::Instant::now();
        loop {
            if moto.answers() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited at start ({status}): is it installed? {MOTO_INSTALL}");
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "moto did not answer on port {port} within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// True once moto answers an HTTP request.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut head = [0u8; 12];
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_exact(&mut head).is_ok()
            && head.starts_with(b"HTTP/1.")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One EC2 call through boto3 (moto's own client; any credentials do), e.g.
    /// `ec2("eu-west-1", "describe_volumes", json!({}))`; the answer as JSON.
    pub fn ec2(&self, region: &str, method: &str, params: Value) -> Value {
        ec2_call(&self.endpoint(), region, method, params)
    }

    /// Launches one instance in `zone` of `region`; its ID.
    pub fn run_instance(&self, region: &str, zone: &str) -> String {
        let reply = self.ec2(
            region,
            "run_instances",
            serde_json::json!({"ImageId": "ami-12c6146b", "MinCount": 1, "MaxCount": 1,
                               "Placement": {"AvailabilityZone": zone}}),
        );
        reply["Instances"][0]["InstanceId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The EBS volumes the driver tagged with a PV's name.
    pub fn volumes_of(&self, region: &str, pv: &str) -> Vec<Value> {
        let reply = self.ec2(
            region,
            "describe_volumes",
            serde_json::json!({"Filters": [{"Name": "tag:flex.io/pv-name", "Values": [pv]}]}),
        );
        reply["Volumes"].as_array().unwrap().clone()
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, never answered.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal moto");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One EC2 call through boto3 to the EC2 API at `endpoint` (any credentials do for moto); the
/// answer as JSON. [`Moto::ec2`] for a moto the caller holds.
pub fn ec2_call(endpoint: &str, region: &str, method: &str, params: Value) -> Value {
    const SCRIPT: &str = "import sys, json, boto3\n\
        c = boto3.client('ec2', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
                         aws_access_key_id='testing', aws_secret_access_key='testing')\n\
        r = getattr(c, sys.argv[3])(**json.loads(sys.argv[4]))\n\
        r.pop('ResponseMetadata', None)\n\
        print(json.dumps(r, default=str))\n";
    let output = Command::new("python3")
        .args(["-c", SCRIPT, endpoint, region, method])
        .arg(params.to_string())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "boto3 {method} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("boto3 answer is JSON")
}

/// A TCP listener whose connections go to `serve` until it is dropped.
pub struct LocalServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LocalServer {
    fn start(serve: impl FnMut(std::net::TcpStream) + Send + 'static) -> LocalServer {
        LocalServer::start_on(std::net::Ipv4Addr::LOCALHOST.into(), serve)
    }

    fn start_on(
        ip: std::net::IpAddr,
        mut serve: impl FnMut(std::net::TcpStream) + Send + 'static,
    ) -> LocalServer {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind the test server");
        listener.set_nonblocking(true).unwrap();
        let server = LocalServer {
            port: listener.local_addr().unwrap().port(),
            stop: Default::default(),
        };
        let stop = server.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        server
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that answers every request `200 ok` and counts them,
/// so a test can prove a denied request never left the sandbox. Stops when dropped.
pub struct LocalHttpServer {
    pub port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _server: LocalServer,
}

impl LocalHttpServer {
    pub fn start() -> LocalHttpServer {
        LocalHttpServer::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// The same server on another of the node's addresses (e.g. its own interface address).
    pub fn start_on(ip: std::net::IpAddr) -> LocalHttpServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let requests = std::sync::Arc::<std::sync::atomic::AtomicUsize>::default();
        let counter = requests.clone();
        let server = LocalServer::start_on(ip, move |mut stream| {
            let _ = stream.set_nonblocking(false);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        });
        LocalHttpServer {
            port: server.port,
            requests,
            _server: server,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP server on 127.0.0.1 that accepts connections and never answers (a hung endpoint).
pub struct SilentServer;

impl SilentServer {
    pub fn start() -> LocalServer {
        let mut held = Vec::new();
        LocalServer::start(move |stream| held.push(stream))
    }
}

/// An HTTP proxy on 127.0.0.1 in front of `127.0.0.1:<upstream>` that shows each request's
/// head (request line and headers) to `before` and forwards the request only when `before`
/// returns, so a test can change the world at an exact point of a driver's conversation.
/// Requests with a body are forwarded whole (`Content-Length`); answers stream back
/// unchanged.
pub struct HookedProxy;

impl HookedProxy {
    pub fn start(upstream: u16, before: impl Fn(&str) + Send + Sync + 'static) -> LocalServer {
        let before = std::sync::Arc::new(before);
        LocalServer::start(move |client| {
            let before = before.clone();
            std::thread::spawn(move || {
                let _ = forward(client, upstream, &*before);
            });
        })
    }
}

/// One client connection of a [`HookedProxy`]: requests in order (keep-alive too), each held
/// until `before` has seen it; answers copied back by a second thread.
fn forward(
    client: std::net::TcpStream,
    upstream: u16,
    before: &dyn Fn(&str),
) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    client.set_nonblocking(false)?;
    let mut server = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut answers, mut to_client) = (server.try_clone()?, client.try_clone()?);
    let copier = std::thread::spawn(move || {
        let _ = std::io::copy(&mut answers, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Write);
    });
    let mut requests = std::io::BufReader::new(client);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if requests.read_line(&mut line)? == 0 {
                let _ = server.shutdown(std::net::Shutdown::Write);
                let _ = copier.join();
                return Ok(());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        requests.read_exact(&mut body)?;
        before(&head);
        server.write_all(head.as_bytes())?;
        server.write_all(&body)?;
    }
}
