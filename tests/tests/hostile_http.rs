//! A hostile driver's outgoing HTTP: a `*` is one DNS label, and the special addresses (other
//! clouds' metadata, NAT64, IPv4 embedded in IPv6, the node's own addresses over plain HTTP)
//! stay out of reach whatever name or form the request uses. Each attack goes through the
//! real binary against a real local server, which must receive nothing.

use flex_tests::*;
use std::net::IpAddr;

fn hostile_node(http: &str) -> (Node, std::path::PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install("test~hostile", &guest("flex_hostile"));
    set_http(&node, http);
    (node, driver)
}

fn set_http(node: &Node, http: &str) {
    node.set_policy(
        "test~hostile",
        &format!("{}\n[http]\n{http}\n", shipped_policy("tmpfs")),
    );
}

fn get(node: &Node, driver: &std::path::Path, url: &str) -> Output {
    let dir = node.pod_dir("victim");
    node.run(
        driver,
        &[
            "mount",
            dir.to_str().unwrap(),
            &mount_json("vol", false, None, &[("attack", "http"), ("url", url)]),
        ],
    )
}

/// The http audit lines, in order.
fn http_audit(node: &Node) -> Vec<Value> {
    node.audit()
        .into_iter()
        .filter(|l| l["operation"] == "http")
        .collect()
}

/// Asserts the request was refused with `expected` in the reply and in the audit's denial.
fn assert_refused(node: &Node, driver: &std::path::Path, url: &str, expected: &str) {
    let message = get(node, driver, url).failure();
    assert!(message.contains(expected), "{url}: {message}");
    let last = http_audit(node).pop().expect("an http audit line");
    assert_eq!(last["decision"], "deny", "{url}: {last}");
    assert!(
        last["rule"].as_str().unwrap().contains(expected),
        "{url}: {last}"
    );
}

#[test]
fn a_wildcard_never_crosses_a_label() {
    let server = LocalHttpServer::start();
    let port = server.port;
    let (node, driver) = hostile_node(&format!(
        "destinations = [\"http://svc.*.localhost:{port}\"]\naddresses = [\"127.0.0.0/8\"]"
    ));
    for host in [
        "svc.evil.com.x.localhost",
        "svc.a.b.localhost",
        "svc.localhost",
        "svc.x.localhost.evil.com",
        "xsvc.x.localhost",
    ] {
        assert_refused(
            &node,
            &driver,
            &format!("http://{host}:{port}/"),
            "not in the policy's http.destinations",
        );
    }
    // An empty label is no label at all.
    let message = get(&node, &driver, &format!("http://svc..localhost:{port}/")).failure();
    assert!(
        message.contains("not a valid host name") || message.contains("invalid request"),
        "{message}"
    );
    // One label, in any case and with a trailing dot, is matched (the name need not resolve
    // here: what matters is that the pattern let it through).
    for host in ["svc.x.localhost", "SVC.X.LocalHost."] {
        let out = get(&node, &driver, &format!("http://{host}:{port}/"));
        let text = format!("{}", out.reply());
        assert!(!text.contains("not in the policy"), "{host}: {text}");
    }
    assert!(
        server.requests() <= 2,
        "only the matching names may have reached the server"
    );
    // Other glob syntax is rejected when the policy is read: every call fails.
    for bad in [
        "https://ec2-*.amazonaws.com",
        "https://**.amazonaws.com",
        "https://ec?.amazonaws.com",
        "https://ec[0-9].amazonaws.com",
        "https://user@ec2.amazonaws.com",
    ] {
        set_http(&node, &format!("destinations = [\"{bad}\"]"));
        let message = get(&node, &driver, "https://ec2.amazonaws.com/").failure();
        assert!(
            message.contains("invalid policy") && message.contains("http.destinations"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn other_clouds_metadata_nat64_and_embedded_ipv4_are_refused() {
    let server = LocalHttpServer::start();
    let port = server.port;
    // "Any host, any port": still none of these.
    let (node, driver) = hostile_node("destinations = [\"http://*:*\", \"https://*:*\"]");
    for (url, expected) in [
        (
            "http://[fd00:ec2::23]/latest/meta-data/".to_string(),
            "cloud metadata (AWS)",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
            "cloud metadata (AWS)",
        ),
        (
            "http://100.100.100.200/latest/meta-data/".to_string(),
            "cloud metadata (Alibaba)",
        ),
        ("http://100.64.0.1/".to_string(), "shared (100.64.0.0/10)"),
        ("http://192.0.0.192/".to_string(), "IETF protocol"),
        ("http://0.0.0.0:{port}/".to_string(), "this-network"),
        ("http://255.255.255.255/".to_string(), "broadcast"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "which embeds 127.0.0.1, a loopback",
        ),
        (
            format!("http://[::ffff:169.254.169.254]:{port}/"),
            "which embeds 169.254.169.254, a link-local",
        ),
        (
            format!("http://[::127.0.0.1]:{port}/"),
            "which embeds 127.0.0.1",
        ),
        (format!("http://[64:ff9b::7f00:1]:{port}/"), "NAT64 address"),
        (
            format!("http://[64:ff9b:1::a9fe:a9fe]:{port}/"),
            "NAT64 (local use)",
        ),
        (
            format!("http://[2002:7f00:1::1]:{port}/"),
            "which embeds 127.0.0.1",
        ),
        (
            "https://[fd00:ec2::23]/latest/api/token".to_string(),
            "cloud metadata (AWS)",
        ),
    ] {
        let url = url.replace("{port}", &port.to_string());
        assert_refused(&node, &driver, &url, expected);
    }
    // Listing the NAT64 prefix lets translated addresses through, never an embedded special
    // one.
    set_http(
        &node,
        "destinations = [\"http://*:*\"]\naddresses = [\"64:ff9b::/96\"]",
    );
    assert_refused(
        &node,
        &driver,
        &format!("http://[64:ff9b::a9fe:a9fe]:{port}/"),
        "which embeds 169.254.169.254",
    );
    assert_eq!(server.requests(), 0, "a refused request reached the server");
}

/// A non-loopback IPv4 address of one of this node's interfaces.
fn own_address() -> IpAddr {
    let found = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address)
        .filter_map(|a| a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())))
        .find(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V4(v4) if v4.is_link_local()));
    found.expect("the node has a non-loopback IPv4 address for this test")
}

#[test]
fn the_nodes_own_address_is_refused_over_plain_http() {
    let own = own_address();
    let server = LocalHttpServer::start_on(own);
    let port = server.port;
    let (node, driver) = hostile_node("destinations = [\"http://*:*\"]");
    let url = format!("http://{own}:{port}/kubelet-read-only");
    assert_refused(&node, &driver, &url, "the node's own (plain HTTP) address");
    assert_eq!(server.requests(), 0);
    // Listed, it is reached for real: the refusal above was the address rule, nothing else.
    set_http(
        &node,
        &format!("destinations = [\"http://*:*\"]\naddresses = [\"{own}\"]"),
    );
    get(&node, &driver, &url).success();
    assert_eq!(server.requests(), 1);
    let last = http_audit(&node).pop().unwrap();
    assert_eq!(last["decision"], "allow", "{last}");
}

#[test]
fn a_name_resolving_to_a_special_address_is_refused() {
    let server = LocalHttpServer::start();
    let port = server.port;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = hostname.trim();
    let (node, driver) = hostile_node(&format!(
        "destinations = [\"http://localhost:{port}\", \"http://*:{port}\"]"
    ));
    for host in ["localhost", "LOCALHOST", "localhost."] {
        assert_refused(
            &node,
            &driver,
            &format!("http://{host}:{port}/"),
            "resolves to 127.0.0.1, a loopback address",
        );
    }
    // The node's own name resolves to a loopback or an own address: refused either way.
    let message = get(&node, &driver, &format!("http://{hostname}:{port}/")).failure();
    assert!(
        message.contains("not listed in http.addresses"),
        "{message}"
    );
    // The resolver's numeric shorthands for 127.0.0.1 are no way around it.
    for host in ["127.1", "2130706433", "0x7f000001", "017700000001"] {
        let message = get(&node, &driver, &format!("http://{host}:{port}/")).failure();
        assert!(message.contains("denied"), "{host}: {message}");
    }
    // A name that does not resolve: the error names the driver's host and nothing else.
    let message = get(
        &node,
        &driver,
        &format!("http://no-such-name.invalid:{port}/"),
    )
    .failure();
    assert!(
        message.ends_with("denied: cannot resolve no-such-name.invalid")
            || message.contains("\"denied: cannot resolve no-such-name.invalid\""),
        "{message}"
    );
    assert_eq!(server.requests(), 0);
}

#[test]
fn user_information_is_refused_and_never_recorded() {
    let server = LocalHttpServer::start();
    let port = server.port;
    let (node, driver) = hostile_node(&format!("destinations = [\"http://127.0.0.1:{port}\"]"));
    // user@host is how one URL names two hosts to two parsers.
    let url = format!("http://admin:hunter2@127.0.0.1:{port}/");
    let message = get(&node, &driver, &url).failure();
    assert!(message.contains("user information"), "{message}");
    assert_eq!(server.requests(), 0);
    // A signed query is sent, but the audit keeps only host and path.
    get(
        &node,
        &driver,
        &format!("http://127.0.0.1:{port}/object?X-Amz-Signature=s3cr3tsig"),
    )
    .success();
    assert_eq!(server.requests(), 1);
    let audit = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let log = node.log();
    for secret in ["hunter2", "s3cr3tsig"] {
        assert!(!audit.contains(secret), "{secret} in the audit: {audit}");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn concurrent_requests_to_special_addresses_all_fail() {
    let server = LocalHttpServer::start();
    let port = server.port;
    let own = own_address();
    let (node, driver) = hostile_node(&format!(
        "destinations = [\"http://*:*\", \"http://svc.*.localhost:{port}\"]"
    ));
    let urls = [
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://{own}:{port}/"),
        "http://[fd00:ec2::23]/".to_string(),
        "http://100.100.100.200/".to_string(),
        format!("http://[64:ff9b::7f00:1]:{port}/"),
        format!("http://svc.a.b.localhost:{port}/"),
    ];
    let dir = node.pod_dir("victim");
    let children: Vec<_> = (0..3)
        .flat_map(|_| urls.iter())
        .map(|url| {
            let options = mount_json("vol", false, None, &[("attack", "http"), ("url", url)]);
            let child = node
                .command(&driver, &["mount", dir.to_str().unwrap(), &options])
                .spawn()
                .expect("spawn flex");
            (url.clone(), child)
        })
        .collect();
    let count = children.len();
    for (url, child) in children {
        let output = child.wait_with_output().unwrap();
        let out = Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let message = out.failure();
        assert!(message.contains("denied"), "{url}: {message}");
    }
    assert_eq!(server.requests(), 0, "a concurrent request got through");
    let denials = http_audit(&node)
        .iter()
        .filter(|l| l["decision"] == "deny")
        .count();
    assert_eq!(denials, count, "every denial is audited, whole");
}
