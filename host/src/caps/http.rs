//! Outgoing HTTP through `wasi:http`, checked in the host's send hook.
//!
//! A request may go only to a destination listed in `http.destinations` as a
//! `scheme://host[:port]` pattern, matched by [`Destination`] (a `*` is one whole DNS label,
//! or any port). The host name is then resolved by the host and every address checked again
//! against [`special_kind`]: loopback, link-local and other clouds' metadata endpoints,
//! shared and reserved ranges, NAT64 and Teredo, any IPv6 form embedding such an IPv4 address,
//! and for plain HTTP the node's own interface addresses are refused unless `http.addresses`
//! lists them (a literal IP in a destination counts as listing it). The connection goes to the
//! checked address, so a DNS answer that changes between check and use (rebinding) cannot
//! redirect it.

use crate::audit::Audit;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// The `[http]` table of a policy.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `scheme://host[:port]` patterns: `https://ec2.*.amazonaws.com`, `http://127.0.0.1:*`.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Special addresses allowed anyway, as IPs or CIDRs: `127.0.0.1`, `10.0.0.0/8`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl HttpGrant {
    pub fn validate(&self) -> Result<(), String> {
        for destination in &self.destinations {
            Destination::parse(destination)
                .map_err(|e| format!("http.destinations: {destination:?} {e}"))?;
        }
        for address in &self.addresses {
            if parse_cidr(address).is_none() {
                return Err(format!("http.addresses: {address:?} is not an IP or CIDR"));
            }
        }
        Ok(())
    }
}

/// One `http.destinations` entry, parsed once.
#[derive(Debug, Clone, PartialEq)]
struct Destination {
    /// As written in the policy: the rule named in the audit.
    text: String,
    https: bool,
    host: HostPattern,
    /// `None`: any port (`*`).
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    /// `*` alone: any host, names and addresses alike.
    Any,
    Ip(IpAddr),
    /// Lower-case labels; `None` is a `*`, which matches exactly one label.
    Name(Vec<Option<String>>),
}

/// A request's host, normalised the way patterns are.
#[derive(Debug, PartialEq)]
enum Host {
    Ip(IpAddr),
    Name(Vec<String>),
}

impl Destination {
    /// The error completes "http.destinations: "…" ".
    fn parse(text: &str) -> Result<Destination, String> {
        let Some((scheme, authority)) = text.split_once("://") else {
            return Err("is not scheme://host[:port]".into());
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err("is not http(s)://host[:port]".into()),
        };
        if authority.contains('@') {
            return Err("has user information: name the host alone".into());
        }
        if authority.is_empty() || authority.contains(['/', '#', ' ']) {
            return Err("is not http(s)://host[:port] (no path)".into());
        }
        let (host, port) = split_authority(authority).ok_or("is not http(s)://host[:port]")?;
        let port = match port {
            None => Some(default_port(https)),
            Some("*") => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or("has a port that is neither a number from 1 to 65535 nor *")?,
            ),
        };
        Ok(Destination {
            text: text.to_string(),
            https,
            host: parse_host_pattern(host)?,
            port,
        })
    }

    fn matches(&self, https: bool, host: &Host, port: u16) -> bool {
        self.https == https
            && self.port.is_none_or(|p| p == port)
            && match (&self.host, host) {
                (HostPattern::Any, _) => true,
                (HostPattern::Ip(a), Host::Ip(b)) => a == b,
                (HostPattern::Name(pattern), Host::Name(labels)) => {
                    pattern.len() == labels.len()
                        && pattern
                            .iter()
                            .zip(labels)
                            .all(|(p, l)| p.as_ref().is_none_or(|p| p == l))
                }
                _ => false,
            }
    }
}

/// `host`, `port` of `host[:port]` or `[v6][:port]`.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let host = &authority[..inside.len() + 2];
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

/// Lower case, without one trailing dot: `Example.COM.` and `example.com` are one host.
fn normalise(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix('.') {
        Some(stripped) => stripped.to_string(),
        None => host,
    }
}

fn parse_ip_host(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, String> {
    if host.starts_with('[') {
        return parse_ip_host(host)
            .map(HostPattern::Ip)
            .ok_or_else(|| "has a bracketed host that is not an IPv6 address".into());
    }
    let host = normalise(host);
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(ip) = parse_ip_host(&host) {
        return Ok(HostPattern::Ip(ip));
    }
    let mut labels = Vec::new();
    for label in host.split('.') {
        if label == "*" {
            labels.push(None);
        } else if label.contains('*') {
            return Err("has a * inside a label: a * stands for one whole DNS label".into());
        } else if !valid_label(label) {
            return Err(format!(
                "has the label {label:?}: host names are letters, digits, - and _ \
                 (no glob syntax other than a * for one whole label)"
            ));
        } else {
            labels.push(Some(label.to_string()));
        }
    }
    // `10.0.*.*` would never match: wildcards match names, never addresses.
    let literal: Vec<&String> = labels.iter().flatten().collect();
    if !literal.is_empty() && literal.iter().all(|l| all_digits(l)) {
        return Err(
            "looks like an address with wildcards: list a literal IP destination or use \
             http.addresses with a CIDR"
                .into(),
        );
    }
    Ok(HostPattern::Name(labels))
}

fn valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn all_digits(label: &str) -> bool {
    label.bytes().all(|b| b.is_ascii_digit())
}

/// A request's host as a name or an address; a malformed one is refused, as are numeric forms
/// other than the canonical dotted quad (`127.1`, `2130706433`, `0x7f.0.0.1`): the resolver
/// reads those as addresses, the patterns would read them as names.
fn parse_request_host(host: &str) -> Result<Host, String> {
    if let Some(ip) = parse_ip_host(host) {
        return Ok(Host::Ip(ip));
    }
    let normalised = normalise(host);
    if let Some(ip) = parse_ip_host(&normalised) {
        return Ok(Host::Ip(ip));
    }
    let labels: Vec<String> = normalised.split('.').map(String::from).collect();
    let numeric = |l: &str| {
        all_digits(l)
            || l.strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if normalised.len() > 253
        || !labels.iter().all(|l| valid_label(l))
        || labels.iter().all(|l| numeric(l))
    {
        return Err(format!("denied: {host:?} is not a valid host name"));
    }
    Ok(Host::Name(labels))
}

/// The HTTP capability for one call: the send hook of `wasi:http`.
pub struct Http {
    destinations: Vec<Destination>,
    /// Special addresses listed explicitly (`http.addresses` and literal-IP destinations).
    listed: Vec<(IpAddr, u8)>,
    /// The node's interface addresses, read on the first plain-HTTP request.
    own: OnceLock<Vec<IpAddr>>,
    /// When the verb's deadline passes: no request may wait beyond it.
    deadline: Instant,
    audit: Audit,
}

impl Http {
    /// `grant` must have passed [`HttpGrant::validate`].
    pub fn new(grant: &HttpGrant, deadline: Instant, audit: Audit) -> Http {
        let destinations: Vec<Destination> = grant
            .destinations
            .iter()
            .filter_map(|d| Destination::parse(d).ok())
            .collect();
        let literal_ips = destinations.iter().filter_map(|d| match d.host {
            HostPattern::Ip(ip) => Some((ip, full_prefix(ip))),
            _ => None,
        });
        let listed = grant
            .addresses
            .iter()
            .filter_map(|a| parse_cidr(a))
            .chain(literal_ips)
            .collect();
        Http {
            destinations,
            listed,
            own: OnceLock::new(),
            deadline,
            audit,
        }
    }

    /// The address to connect to and the rule that allows it. Errors name only what the
    /// driver gave (its host) and the addresses that host resolved to.
    fn authorize(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<(SocketAddr, String), String> {
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(format!("denied: scheme {scheme:?} is not http or https")),
        };
        let destination = format!("{scheme}://{host}:{port}");
        let parsed = parse_request_host(host)?;
        let Some(rule) = self
            .destinations
            .iter()
            .find(|d| d.matches(https, &parsed, port))
        else {
            return Err(format!(
                "denied: destination {destination} is not in the policy's http.destinations"
            ));
        };
        let addresses: Vec<SocketAddr> = match &parsed {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(labels) => (labels.join("."), port)
                .to_socket_addrs()
                // The resolver's own words may name its files; the driver gets only its host.
                .map_err(|_| format!("denied: cannot resolve {host}"))?
                .collect(),
        };
        for address in &addresses {
            if let Some((seen, kind)) = self.refusal(address.ip(), !https) {
                let ip = address.ip();
                let embeds = if seen == ip {
                    String::new()
                } else {
                    format!(", which embeds {seen}")
                };
                return Err(format!(
                    "denied: {host} resolves to {ip}{embeds}, a {kind} address not listed in http.addresses"
                ));
            }
        }
        let first = addresses
            .first()
            .copied()
            .ok_or_else(|| format!("denied: {host} resolves to no address"))?;
        Ok((first, format!("http.destinations {:?}", rule.text)))
    }

    /// The first address, of `ip` and the IPv4 addresses it embeds, that is special and not
    /// listed, with why it is special.
    fn refusal(&self, ip: IpAddr, plain_http: bool) -> Option<(IpAddr, &'static str)> {
        std::iter::once(ip)
            .chain(embedded_v4(ip).into_iter().flatten().map(IpAddr::V4))
            .find_map(|seen| {
                let kind = special_kind(seen).or_else(|| {
                    (plain_http && self.own_addresses().contains(&seen))
                        .then_some("the node's own (plain HTTP)")
                })?;
                let listed = self
                    .listed
                    .iter()
                    .any(|&(net, bits)| in_network(seen, net, bits));
                (!listed).then_some((seen, kind))
            })
    }

    fn own_addresses(&self) -> &[IpAddr] {
        self.own.get_or_init(interface_addresses)
    }

    /// Timeouts no longer than what is left of the verb's deadline.
    fn bounded(&self, options: Option<RequestOptions>) -> RequestOptions {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let cap = |t: Option<Duration>| Some(t.map_or(left, |t| t.min(left)));
        let options = options.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        }
    }
}

/// Every address of every interface of the node (and their broadcast addresses). If they
/// cannot be read, the loopback addresses stand in (they are refused anyway).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    };
    let ip = |a: &nix::sys::socket::SockaddrStorage| {
        a.as_sockaddr_in()
            .map(|v4| IpAddr::V4(v4.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
    };
    let mut addresses: Vec<IpAddr> = interfaces
        .flat_map(|i| [i.address, i.broadcast])
        .flatten()
        .filter_map(|a| ip(&a))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

type Sent = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
)>;

impl WasiHttpHooks for Http {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(default_port(scheme != "http"));
        // The query may carry signatures (presigned URLs), user information a password: only
        // the host and path are recorded.
        let args = json!({
            "method": request.method().as_str(),
            "url": format!("{scheme}://{host}:{port}{}", uri.path()),
        });
        let has_userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
        let authorized = if has_userinfo {
            Err("denied: a URL with user information is refused".to_string())
        } else {
            self.authorize(&scheme, &host, port)
        };
        let rule = authorized
            .as_ref()
            .map(|(_, rule)| rule.clone())
            .map_err(Clone::clone);
        // The address to send to; `None` in a dry run, which performs nothing.
        let checked = authorized.ok().map(|(address, _)| address);
        let address = match self.audit.run("http", args, rule, || Ok(checked)) {
            Ok(Some(address)) => address,
            Ok(None) => return refused("dry run: the request was not sent".into()),
            Err(reason) => return refused(reason),
        };
        if scheme == "http" {
            // Connect to the address that was checked, not to a second DNS answer. (For
            // https the certificate check binds the connection to the name instead.)
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            match http::Uri::builder()
                .scheme("http")
                .authority(address.to_string())
                .path_and_query(path)
                .build()
            {
                Ok(pinned) => *request.uri_mut() = pinned,
                Err(e) => return refused(format!("invalid request URI: {e}")),
            }
        }
        let options = self.bounded(options);
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

fn refused(reason: String) -> Box<dyn Future<Output = Sent> + Send> {
    Box::new(async move { Err(wasmtime_wasi_http::Error::InternalError(Some(reason))) })
}

/// The IPv4 addresses an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), translated
/// (`::ffff:0:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, and for the
/// local-use `64:ff9b:1::/48` both the /96 and the /48 layouts of RFC 6052) and 6to4
/// (`2002:AABB:CCDD::/48`). Each is checked like the address itself.
fn embedded_v4(ip: IpAddr) -> [Option<Ipv4Addr>; 2] {
    let IpAddr::V6(v6) = ip else {
        return [None, None];
    };
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from(bits as u32);
    let seg = v6.segments();
    if bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000 {
        return [Some(low32), None];
    }
    if bits >> 32 == 0 && bits > 1 {
        return [Some(low32), None];
    }
    if in_network(
        ip,
        IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
        96,
    ) {
        return [Some(low32), None];
    }
    if in_network(
        ip,
        IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0)),
        48,
    ) {
        // /48 layout: 16 bits before the u-octet (bits 64..72), 16 after it.
        let octets = v6.octets();
        let v4 = Ipv4Addr::new(octets[6], octets[7], octets[9], octets[10]);
        return [Some(low32), Some(v4)];
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return [Some(v4), None];
    }
    [None, None]
}

/// Why an address needs an explicit grant, if it does. Private ranges (10/8, 172.16/12,
/// 192.168/16, IPv6 unique-local fc00::/7) are not special: storage APIs live there. Shared
/// address space (100.64/10) is, for Alibaba Cloud's metadata service lives in it.
fn special_kind(ip: IpAddr) -> Option<&'static str> {
    let in_net = |net: IpAddr, bits: u8| in_network(ip, net, bits);
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let v6 = |s0, s1, s2| IpAddr::V6(Ipv6Addr::new(s0, s1, s2, 0, 0, 0, 0, 0));
    match ip {
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V4(_) if in_net(v4(0, 0, 0, 0), 8) => Some("this-network (0.0.0.0/8)"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local (cloud metadata)"),
        IpAddr::V4(a) if a == Ipv4Addr::new(100, 100, 100, 200) => Some("cloud metadata (Alibaba)"),
        IpAddr::V4(_) if in_net(v4(100, 64, 0, 0), 10) => Some("shared (100.64.0.0/10)"),
        // 192.0.0.192 is Oracle Cloud's legacy metadata; NAT64 discovery lives here too.
        IpAddr::V4(_) if in_net(v4(192, 0, 0, 0), 24) => Some("IETF protocol (192.0.0.0/24)"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(_) if in_net(v4(240, 0, 0, 0), 4) => Some("reserved (240.0.0.0/4)"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(_) if in_net(v6(0xfe80, 0, 0), 10) => Some("link-local"),
        IpAddr::V6(_) if in_net(v6(0xfec0, 0, 0), 10) => Some("site-local"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        // AWS (fd00:ec2::254, fd00:ec2::23) and Google Cloud (fd20:ce::254).
        IpAddr::V6(_) if in_net(v6(0xfd00, 0xec2, 0), 32) => Some("cloud metadata (AWS)"),
        IpAddr::V6(_) if in_net(v6(0xfd20, 0xce, 0), 48) => Some("cloud metadata (Google)"),
        IpAddr::V6(_) if in_net(v6(0x64, 0xff9b, 0), 96) => Some("NAT64"),
        IpAddr::V6(_) if in_net(v6(0x64, 0xff9b, 1), 48) => Some("NAT64 (local use)"),
        IpAddr::V6(_) if in_net(v6(0x2001, 0, 0), 32) => Some("Teredo"),
        IpAddr::V6(_) if in_net(v6(0x100, 0, 0), 64) => Some("discard-only"),
        _ => None,
    }
}

fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `10.0.0.0/8`, `127.0.0.1`, `::1`.
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?),
        None => {
            let ip = text.parse::<IpAddr>().ok()?;
            (ip, full_prefix(ip))
        }
    };
    (bits <= full_prefix(ip)).then_some((ip, bits))
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let bits = u32::from(bits);
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(destinations: &[&str], addresses: &[&str]) -> Http {
        let grant = HttpGrant {
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        };
        grant.validate().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        Http::new(&grant, deadline, Audit::to(None, "test", "attach", false))
    }

    #[test]
    fn only_listed_destinations_are_allowed() {
        let h = http(&["http://127.0.0.1:*", "https://ec2.*.amazonaws.com"], &[]);
        assert!(h.authorize("http", "127.0.0.1", 5000).is_ok());
        let err = h.authorize("https", "127.0.0.1", 443).unwrap_err();
        assert!(err.contains("not in the policy"), "{err}");
        assert!(h.authorize("http", "10.1.2.3", 80).is_err());
        // A pattern without a port means the scheme's default port only.
        assert!(
            h.authorize("https", "ec2.eu-west-1.amazonaws.com", 8443)
                .is_err()
        );
    }

    fn pattern(text: &str) -> Destination {
        Destination::parse(text).unwrap()
    }

    fn matches(pattern: &Destination, url_host: &str, port: u16) -> bool {
        parse_request_host(url_host).is_ok_and(|h| pattern.matches(true, &h, port))
    }

    #[test]
    fn a_star_is_one_whole_label() {
        let p = pattern("https://ec2.*.amazonaws.com");
        assert!(matches(&p, "ec2.eu-west-1.amazonaws.com", 443));
        for host in [
            "ec2.evil.com.x.amazonaws.com",
            "ec2..amazonaws.com",
            "ec2.amazonaws.com",
            "ec2.x.amazonaws.com.evil.com",
            "xec2.eu-west-1.amazonaws.com",
            "ec2.eu-west-1.amazonaws.comx",
        ] {
            assert!(!matches(&p, host, 443), "{host}");
        }
        // Case and one trailing dot do not matter, on either side.
        assert!(matches(&p, "EC2.EU-West-1.AmazonAWS.com.", 443));
        assert!(matches(
            &pattern("https://EC2.*.amazonaws.com."),
            "ec2.a.amazonaws.com",
            443
        ));
        assert!(!matches(&p, "ec2.a.amazonaws.com..", 443));
        // `*` alone is any host; `*` as the port any port.
        assert!(matches(&pattern("https://*"), "a.b.c.example", 443));
        assert!(matches(&pattern("https://*"), "10.0.0.1", 443));
        assert!(!matches(&pattern("https://*"), "a.example", 8443));
        assert!(matches(&pattern("https://*.example:*"), "a.example", 8443));
        assert!(!matches(
            &pattern("https://*.example:*"),
            "a.b.example",
            8443
        ));
        // Name patterns never match addresses, nor the resolver's numeric shorthands.
        assert!(!matches(&pattern("https://*.*.*.*"), "10.0.0.1", 443));
        for numeric in ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1"] {
            assert!(parse_request_host(numeric).is_err(), "{numeric}");
        }
        assert!(matches(&pattern("https://[::1]:*"), "[::1]", 1));
    }

    #[test]
    fn destinations_with_other_glob_syntax_or_userinfo_are_rejected() {
        for bad in [
            "ftp://x",
            "example.com",
            "http://x/path",
            "http://",
            "https://ec2-*.amazonaws.com",
            "https://**.amazonaws.com",
            "https://ec?.amazonaws.com",
            "https://ec[0-9].amazonaws.com",
            "https://{a,b}.example",
            "https://user@example.com",
            "https://user:pw@example.com",
            "https://a..example",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:8*",
            "http://10.0.*.*",
            "http://::1",
            "http://[not-v6]",
        ] {
            let grant = HttpGrant {
                destinations: vec![bad.into()],
                addresses: vec![],
            };
            assert!(grant.validate().is_err(), "{bad}");
        }
        let grant = HttpGrant {
            destinations: vec!["https://user@example.com".into()],
            addresses: vec![],
        };
        assert!(grant.validate().unwrap_err().contains("user information"));
    }

    #[test]
    fn special_addresses_need_an_explicit_listing() {
        let h = http(&["http://localhost:*", "http://169.254.169.254"], &[]);
        let err = h.authorize("http", "localhost", 8080).unwrap_err();
        assert!(err.contains("loopback address not listed"), "{err}");
        // A literal IP destination lists that address.
        assert!(h.authorize("http", "169.254.169.254", 80).is_ok());
        let h = http(
            &["http://localhost:*", "http://169.254.169.254"],
            &["127.0.0.0/8", "::1"],
        );
        assert!(h.authorize("http", "localhost", 8080).is_ok());
        let h = http(&["http://*:*", "https://*:*"], &[]);
        for ip in [
            "169.254.169.254",
            "127.0.0.2",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "100.64.0.1",
            "192.0.0.192",
            "240.0.0.1",
            "[fd00:ec2::23]",
            "[fd00:ec2::254]",
            "[fd00:ec2:ffff::1]",
            "[fd20:ce::254]",
            "[::ffff:169.254.169.254]",
            "[::ffff:127.0.0.1]",
            "[::127.0.0.1]",
            "[64:ff9b::8.8.8.8]",
            "[64:ff9b::a9fe:a9fe]",
            "[64:ff9b:1::1]",
            "[2002:a9fe:a9fe::1]",
            "[2002:7f00:1::]",
            "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
            "[fe80::1]",
            "[ff02::1]",
            "[::]",
            "[::1]",
        ] {
            for scheme in ["http", "https"] {
                let err = h.authorize(scheme, ip, 80).unwrap_err();
                assert!(err.contains("not listed in http.addresses"), "{ip}: {err}");
            }
        }
        let err = h.authorize("http", "[64:ff9b::a9fe:a9fe]", 80).unwrap_err();
        assert!(err.contains("NAT64"), "{err}");
        // Listing a NAT64 prefix lets translated public addresses through, never an embedded
        // special one.
        let h = http(&["http://*"], &["64:ff9b::/96"]);
        assert!(h.authorize("http", "[64:ff9b::8.8.8.8]", 80).is_ok());
        let err = h.authorize("http", "[64:ff9b::a9fe:a9fe]", 80).unwrap_err();
        assert!(err.contains("embeds 169.254.169.254"), "{err}");
        // Private ranges, unique-local and public 6to4 are ordinary.
        let h = http(&["https://*"], &[]);
        for ip in [
            "10.1.2.3",
            "192.168.1.1",
            "8.8.8.8",
            "[fd12:3456::1]",
            "[2002:808:808::1]",
        ] {
            assert!(h.authorize("https", ip, 443).is_ok(), "{ip}");
        }
    }

    #[test]
    fn the_nodes_own_addresses_are_refused_for_plain_http() {
        let h = http(&["http://*:*", "https://*:*"], &[]);
        h.own.set(vec!["192.0.2.2".parse().unwrap()]).unwrap();
        let err = h.authorize("http", "192.0.2.2", 8080).unwrap_err();
        assert!(err.contains("the node's own"), "{err}");
        assert!(h.authorize("https", "192.0.2.2", 8443).is_ok());
        let h = http(&["http://*:*"], &["192.0.2.0/24"]);
        h.own.set(vec!["192.0.2.2".parse().unwrap()]).unwrap();
        assert!(h.authorize("http", "192.0.2.2", 8080).is_ok());
        // The real interface list holds loopback at least.
        assert!(interface_addresses().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn resolution_errors_name_only_the_drivers_host() {
        let h = http(&["https://*.invalid"], &[]);
        let err = h
            .authorize("https", "no-such-host.invalid", 443)
            .unwrap_err();
        assert_eq!(err, "denied: cannot resolve no-such-host.invalid");
    }

    #[test]
    fn address_helpers() {
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        let (net, bits) = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_network("10.9.8.7".parse().unwrap(), net, bits));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net, bits));
        let embedded = |ip: &str| embedded_v4(ip.parse().unwrap());
        assert_eq!(embedded("::ffff:127.0.0.1")[0], Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            embedded("2002:a9fe:a9fe::1")[0],
            Some(Ipv4Addr::new(169, 254, 169, 254))
        );
        assert_eq!(embedded("::1"), [None, None]);
        assert_eq!(special_kind("93.184.216.34".parse().unwrap()), None);
        assert_eq!(
            special_kind("100.100.100.200".parse().unwrap()),
            Some("cloud metadata (Alibaba)")
        );
    }
}
