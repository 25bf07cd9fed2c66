//! Outgoing HTTP through `wasi:http`, checked in the host's send hook.
//!
//! A request may go only to a destination listed in `http.destinations` as a
//! `scheme://host[:port]` pattern. The host name is then resolved by the host and every
//! address checked again: loopback, link-local (cloud metadata among them), unspecified and
//! multicast addresses are refused unless `http.addresses` lists them (a literal IP in a
//! destination counts as listing it). The connection goes to the checked address, so a DNS
//! answer that changes between check and use (rebinding) cannot redirect it.

use super::Patterns;
use crate::audit::Audit;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
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
        Patterns::compile(&self.destinations)?;
        for destination in &self.destinations {
            let Some((scheme, rest)) = destination.split_once("://") else {
                return Err(format!(
                    "http.destinations: {destination:?} is not scheme://host[:port]"
                ));
            };
            if !["http", "https"].contains(&scheme) || rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "http.destinations: {destination:?} is not http(s)://host[:port]"
                ));
            }
        }
        for address in &self.addresses {
            if parse_cidr(address).is_none() {
                return Err(format!("http.addresses: {address:?} is not an IP or CIDR"));
            }
        }
        Ok(())
    }
}

/// The HTTP capability for one call: the send hook of `wasi:http`.
pub struct Http {
    /// Destination patterns, each with its port made explicit.
    destinations: Patterns,
    /// Special addresses listed explicitly (`http.addresses` and literal-IP destinations).
    listed: Vec<(IpAddr, u8)>,
    /// When the verb's deadline passes: no request may wait beyond it.
    deadline: Instant,
    audit: Audit,
}

impl Http {
    /// `grant` must have passed [`HttpGrant::validate`].
    pub fn new(grant: &HttpGrant, deadline: Instant, audit: Audit) -> Http {
        let with_ports: Vec<String> = grant.destinations.iter().map(|d| with_port(d)).collect();
        let literal_ips = grant.destinations.iter().filter_map(|d| {
            let (_, host, _) = split_destination(d)?;
            host.parse::<IpAddr>().ok().map(|ip| (ip, full_prefix(ip)))
        });
        Http {
            destinations: Patterns::compile(&with_ports).unwrap_or_default(),
            listed: grant
                .addresses
                .iter()
                .filter_map(|a| parse_cidr(a))
                .chain(literal_ips)
                .collect(),
            deadline,
            audit,
        }
    }

    /// The address to connect to and the rule that allows it.
    fn authorize(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<(SocketAddr, String), String> {
        let destination = format!("{scheme}://{host}:{port}");
        let Some(pattern) = self.destinations.matching(&destination) else {
            return Err(format!(
                "denied: destination {destination} is not in the policy's http.destinations"
            ));
        };
        let addresses: Vec<SocketAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("denied: cannot resolve {host}: {e}"))?
                .collect(),
        };
        for address in &addresses {
            let ip = address.ip();
            if let Some(kind) = special_kind(ip)
                && !self
                    .listed
                    .iter()
                    .any(|&(net, bits)| in_network(ip, net, bits))
            {
                return Err(format!(
                    "denied: {host} resolves to {ip}, a {kind} address not listed in http.addresses"
                ));
            }
        }
        let first = addresses
            .first()
            .copied()
            .ok_or_else(|| format!("denied: {host} resolves to no address"))?;
        Ok((first, format!("http.destinations {pattern:?}")))
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
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        // The query may carry signatures (presigned URLs): only the path is recorded.
        let args = json!({
            "method": request.method().as_str(),
            "url": format!("{scheme}://{host}:{port}{}", uri.path()),
        });
        let authorized = self.authorize(&scheme, &host, port);
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

/// `scheme`, `host`, `port` of a `scheme://host[:port]` pattern.
fn split_destination(destination: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, authority) = destination.split_once("://")?;
    Some(match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (scheme, host, Some(port)),
        _ => (scheme, authority, None),
    })
}

/// `https://example.com` → `https://example.com:443`, so patterns and requests compare alike.
fn with_port(destination: &str) -> String {
    match split_destination(destination) {
        Some((scheme, host, None)) => {
            let port = if scheme == "http" { 80 } else { 443 };
            format!("{scheme}://{host}:{port}")
        }
        _ => destination.to_string(),
    }
}

/// Why an address needs an explicit grant, if it does.
fn special_kind(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (cloud metadata)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("non-unicast")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        // AWS's IPv6 instance metadata endpoint.
        IpAddr::V6(v6) if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => {
            Some("cloud metadata")
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("non-unicast"),
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
        let h = http(&["http://*"], &[]);
        for ip in ["169.254.169.254", "127.0.0.2", "0.0.0.0", "224.0.0.1"] {
            assert!(h.authorize("http", ip, 80).is_err(), "{ip}");
        }
    }

    #[test]
    fn address_helpers() {
        assert_eq!(with_port("https://a.example"), "https://a.example:443");
        assert_eq!(with_port("http://a.example:*"), "http://a.example:*");
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        let (net, bits) = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_network("10.9.8.7".parse().unwrap(), net, bits));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net, bits));
        assert_eq!(
            special_kind("::ffff:127.0.0.1".parse().unwrap()),
            Some("loopback")
        );
        assert_eq!(special_kind("93.184.216.34".parse().unwrap()), None);
    }

    #[test]
    fn invalid_destinations_are_rejected() {
        for bad in ["ftp://x", "example.com", "http://x/path", "http://"] {
            let grant = HttpGrant {
                destinations: vec![bad.into()],
                addresses: vec![],
            };
            assert!(grant.validate().is_err(), "{bad}");
        }
    }
}
