//! A small EC2 Query API client: signed (SigV4) GETs through `wasi:http` (the host checks
//! every request against the policy's `[http]` destinations), XML answers parsed into the few
//! fields the driver needs.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::fmt;
use std::time::{Duration, SystemTime};
use wstd::http::{Body, Client, Request};

/// The EC2 API version every request names.
const API_VERSION: &str = "2016-11-15";

/// Why an EC2 call failed.
#[derive(Debug)]
pub enum Error {
    /// EC2 answered with an error: its code (`InvalidVolume.NotFound`...) and message.
    Api {
        action: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The request never got an EC2 answer: denied by the policy, connection refused,
    /// timed out, or an answer that is not EC2's XML.
    Transport { action: String, detail: String },
}

impl Error {
    /// The EC2 error code, if EC2 answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::Transport { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api {
                action,
                status,
                code,
                message,
            } => write!(f, "EC2 {action} failed: {code}: {message} (HTTP {status})"),
            Error::Transport { action, detail } => write!(f, "EC2 {action} failed: {detail}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where and as whom to call EC2.
pub struct Ec2 {
    endpoint: http::Uri,
    region: String,
    credentials: Credentials,
    timeout: Duration,
}

/// One attachment of a volume, from DescribeVolumes.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub instance_id: String,
    /// The EC2 device name (`/dev/xvdf`).
    pub device: String,
    /// `attaching`, `attached`, `detaching`, `detached`, `busy`.
    pub state: String,
}

/// One volume, from DescribeVolumes.
#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    pub size_gib: u64,
    pub zone: String,
    pub volume_type: String,
    pub attachments: Vec<Attachment>,
    pub tags: Vec<(String, String)>,
}

impl Volume {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Ec2 {
    /// `endpoint` is `scheme://host[:port]` (a path is ignored: EC2's Query API lives at `/`).
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> std::result::Result<Ec2, String> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("config endpoint {endpoint:?} is not a URL: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!(
                "config endpoint {endpoint:?} is not scheme://host[:port]"
            ));
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("config endpoint {endpoint:?} is not http(s)"));
        }
        let endpoint = http::Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("config endpoint {endpoint:?}: {e}"))?;
        if region.is_empty() {
            return Err("config region is empty".into());
        }
        Ok(Ec2 {
            endpoint,
            region: region.to_string(),
            credentials,
            timeout,
        })
    }

    /// One signed Query API call; the answer's XML text on success.
    fn call(&self, action: &str, params: &[(String, String)]) -> Result<String> {
        let transport = |detail: String| Error::Transport {
            action: action.to_string(),
            detail,
        };
        // GET with the parameters in the query, so the request has no body: a request the
        // host refuses then fails with the host's reason rather than a broken body stream.
        // The audit records the path only; the signature is in the Authorization header.
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", API_VERSION)
            .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let url = format!("{}?{query}", self.endpoint);
        let identity = self.credentials.clone().into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| transport(format!("cannot sign the request: {e}")))?
            .into();
        let signable =
            SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
                .map_err(|e| transport(format!("cannot sign the request: {e}")))?;
        let (instructions, _signature) = sign(signable, &signing)
            .map_err(|e| transport(format!("cannot sign the request: {e}")))?
            .into_parts();
        let mut request = Request::get(&url)
            // A body that writes nothing (`Body::empty` would still touch the stream).
            .body(Body::from_stream(futures_lite::stream::empty::<Vec<u8>>()))
            .map_err(|e| transport(format!("invalid request: {e}")))?;
        instructions.apply_to_request_http1x(&mut request);
        let url = self.endpoint.to_string();

        let mut client = Client::new();
        client.set_connect_timeout(self.timeout);
        client.set_first_byte_timeout(self.timeout);
        client.set_between_bytes_timeout(self.timeout);
        let (status, text) = wstd::runtime::block_on(async {
            let response = client.send(request).await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let text = String::from_utf8_lossy(body.contents().await?).into_owned();
            Ok::<_, wstd::http::Error>((status, text))
        })
        .map_err(|e| transport(format!("request to {url} failed: {}", describe(&e))))?;

        if (200..300).contains(&status) {
            return Ok(text);
        }
        let (code, message) = match roxmltree::Document::parse(&text) {
            Ok(doc) => (
                descendant_text(doc.root(), "Code").unwrap_or_default(),
                descendant_text(doc.root(), "Message").unwrap_or_default(),
            ),
            Err(_) => (String::new(), String::new()),
        };
        if code.is_empty() {
            let snippet: String = text.chars().take(200).collect();
            return Err(transport(format!(
                "HTTP {status} from {url} without an EC2 error: {snippet:?}"
            )));
        }
        Err(Error::Api {
            action: action.to_string(),
            status,
            code,
            message,
        })
    }

    /// The answer of `call`, parsed.
    fn call_xml<T>(
        &self,
        action: &str,
        params: &[(String, String)],
        read: impl FnOnce(roxmltree::Node) -> Option<T>,
    ) -> Result<T> {
        let text = self.call(action, params)?;
        let malformed = |detail: String| Error::Transport {
            action: action.to_string(),
            detail: format!("malformed answer: {detail}"),
        };
        let doc = roxmltree::Document::parse(&text).map_err(|e| malformed(e.to_string()))?;
        read(doc.root_element()).ok_or_else(|| {
            let snippet: String = text.chars().take(200).collect();
            malformed(format!("unexpected XML {snippet:?}"))
        })
    }

    /// DescribeVolumes with `filters` (name, values); every page.
    pub fn describe_volumes(&self, filters: &[(&str, &[&str])]) -> Result<Vec<Volume>> {
        let mut base = Vec::new();
        for (i, (name, values)) in filters.iter().enumerate() {
            base.push((format!("Filter.{}.Name", i + 1), name.to_string()));
            for (j, value) in values.iter().enumerate() {
                base.push((
                    format!("Filter.{}.Value.{}", i + 1, j + 1),
                    value.to_string(),
                ));
            }
        }
        let mut volumes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = base.clone();
            if let Some(token) = &token {
                params.push(("NextToken".into(), token.clone()));
            }
            let (page, next) = self.call_xml("DescribeVolumes", &params, |root| {
                let set = child(root, "volumeSet")?;
                let page: Option<Vec<Volume>> = children(set, "item").map(read_volume).collect();
                Some((
                    page?,
                    child_text(root, "nextToken").filter(|t| !t.is_empty()),
                ))
            })?;
            volumes.extend(page);
            match next {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                _ => return Ok(volumes),
            }
        }
    }

    /// One volume by id; `None` when EC2 does not know it (any more).
    pub fn volume(&self, id: &str) -> Result<Option<Volume>> {
        match self.describe_volumes(&[("volume-id", &[id])]) {
            Ok(volumes) => Ok(volumes.into_iter().find(|v| v.id == id)),
            Err(e) if e.code() == Some("InvalidVolume.NotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// CreateVolume; returns the new volume's id.
    pub fn create_volume(
        &self,
        params: Vec<(String, String)>,
        tags: &[(&str, &str)],
    ) -> Result<String> {
        let mut params = params;
        params.push(("TagSpecification.1.ResourceType".into(), "volume".into()));
        for (i, (key, value)) in tags.iter().enumerate() {
            params.push((
                format!("TagSpecification.1.Tag.{}.Key", i + 1),
                key.to_string(),
            ));
            params.push((
                format!("TagSpecification.1.Tag.{}.Value", i + 1),
                value.to_string(),
            ));
        }
        self.call_xml("CreateVolume", &params, |root| child_text(root, "volumeId"))
    }

    /// The availability zone of an instance; `None` when EC2 does not know it.
    pub fn instance_zone(&self, instance_id: &str) -> Result<Option<String>> {
        let params = [("InstanceId.1".into(), instance_id.into())];
        let found = self.call_xml("DescribeInstances", &params, |root| {
            let reservations = child(root, "reservationSet")?;
            Some(
                children(reservations, "item")
                    .filter_map(|r| child(r, "instancesSet"))
                    .flat_map(|set| children(set, "item"))
                    .find(|i| child_text(*i, "instanceId").as_deref() == Some(instance_id))
                    .and_then(|i| child(i, "placement"))
                    .and_then(|p| child_text(p, "availabilityZone"))
                    .filter(|zone| !zone.is_empty()),
            )
        });
        match found {
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
            other => other,
        }
    }

    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.call("DeleteVolume", &[("VolumeId".into(), id.into())])
            .map(drop)
    }

    pub fn attach_volume(&self, id: &str, instance_id: &str, device: &str) -> Result<()> {
        let params = [
            ("VolumeId".into(), id.into()),
            ("InstanceId".into(), instance_id.into()),
            ("Device".into(), device.into()),
        ];
        self.call("AttachVolume", &params).map(drop)
    }

    pub fn detach_volume(&self, id: &str, instance_id: &str) -> Result<()> {
        let params = [
            ("VolumeId".into(), id.into()),
            ("InstanceId".into(), instance_id.into()),
        ];
        self.call("DetachVolume", &params).map(drop)
    }
}

/// An HTTP error, with the `wasi:http` error code (which carries the host's reason for a
/// denied request) when there is one.
fn describe(error: &wstd::http::Error) -> String {
    let text = format!("{error:#}");
    match error.downcast_ref::<wstd::http::ErrorCode>() {
        Some(wstd::http::ErrorCode::InternalError(Some(reason))) => reason.clone(),
        Some(code) if !text.contains(&format!("{code:?}")) => format!("{text} ({code:?})"),
        _ => text,
    }
}

fn read_volume(item: roxmltree::Node) -> Option<Volume> {
    let attachments = child(item, "attachmentSet")
        .map(|set| {
            children(set, "item")
                .map(|a| {
                    Some(Attachment {
                        instance_id: child_text(a, "instanceId")?,
                        device: child_text(a, "device").unwrap_or_default(),
                        state: child_text(a, "status").unwrap_or_default(),
                    })
                })
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(Vec::new()))?;
    let tags = child(item, "tagSet")
        .map(|set| {
            children(set, "item")
                .filter_map(|t| Some((child_text(t, "key")?, child_text(t, "value")?)))
                .collect()
        })
        .unwrap_or_default();
    Some(Volume {
        id: child_text(item, "volumeId")?,
        state: child_text(item, "status").unwrap_or_default(),
        size_gib: child_text(item, "size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        zone: child_text(item, "availabilityZone").unwrap_or_default(),
        volume_type: child_text(item, "volumeType").unwrap_or_default(),
        attachments,
        tags,
    })
}

/// Child elements by local name (EC2 answers carry a default namespace).
fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> Option<roxmltree::Node<'a, 'i>> {
    children(node, name).next()
}

fn child_text(node: roxmltree::Node, name: &'static str) -> Option<String> {
    child(node, name).map(|n| n.text().unwrap_or_default().trim().to_string())
}

fn descendant_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .map(|n| n.text().unwrap_or_default().trim().to_string())
}
