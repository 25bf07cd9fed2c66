//! The reply as kubelet reads it (protocol notes §2): the whole of stdout+stderr one JSON
//! document, decoded into kubelet's `DriverStatus` as Go's `encoding/json` does.

use serde_json::{Map, Value};

/// kubelet's `DriverStatus`, decoded as Go's `encoding/json` would (protocol notes §2): keys
/// matched case-insensitively, `null` leaves a field unset, a wrong type is an error.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: Option<String>,
    pub message: Option<String>,
    pub device: Option<String>,
    pub attached: Option<bool>,
    /// `Some(None)`: `"capabilities": null` (kubelet dereferences it: a crash).
    pub capabilities: Option<Option<Map<String, Value>>>,
}

pub fn parse(output: &[u8]) -> Result<Reply, String> {
    if output.starts_with(b"\xef\xbb\xbf") {
        return Err("the output starts with a UTF-8 byte order mark".into());
    }
    if output.iter().all(u8::is_ascii_whitespace) {
        return Err("empty output (kubelet: unexpected end of JSON input)".into());
    }
    let value: Value = match serde_json::from_slice(output) {
        Ok(value) => value,
        Err(e) => {
            let documents = serde_json::Deserializer::from_slice(output)
                .into_iter::<Value>()
                .take_while(Result::is_ok)
                .count();
            return Err(match documents {
                0 => format!("not JSON ({e}): text before the reply, or no reply"),
                1 => format!("text after the JSON reply ({e})"),
                n => format!("{n} JSON documents, kubelet reads exactly one ({e})"),
            });
        }
    };
    let Value::Object(object) = value else {
        return match value {
            Value::Null => Err("the reply is null: kubelet finds no status".into()),
            other => Err(format!("the reply is not a JSON object: {other}")),
        };
    };
    let field = |name: &str| {
        object
            .get(name)
            .or_else(|| {
                object
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .filter(|v| !v.is_null())
    };
    let string = |name: &str| match field(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{name:?} is {other}, not a string (kubelet: cannot unmarshal)"
        )),
    };
    let attached = match field("attached") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(format!(
                "\"attached\" is {other}, not a bool (kubelet: cannot unmarshal)"
            ));
        }
    };
    if let Some(size) = field("volumeNewSize")
        && !size.is_i64()
    {
        return Err(format!(
            "\"volumeNewSize\" is {size}, not an integer (kubelet: cannot unmarshal)"
        ));
    }
    let capabilities = match object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("capabilities"))
        .map(|(_, v)| v)
    {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Object(caps)) => {
            if let Some((k, v)) = caps.iter().find(|(_, v)| !v.is_boolean() && !v.is_null()) {
                return Err(format!(
                    "capability {k:?} is {v}, not a bool (kubelet: cannot unmarshal)"
                ));
            }
            Some(Some(caps.clone()))
        }
        Some(other) => {
            return Err(format!(
                "\"capabilities\" is {other}, not an object (kubelet: cannot unmarshal)"
            ));
        }
    };
    Ok(Reply {
        status: string("status")?,
        message: string("message")?,
        device: string("device")?,
        attached,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn replies_are_read_as_kubelet_reads_them() {
        let ok = parse(b"  {\"status\":\"Success\"}\n").unwrap();
        assert_eq!(ok.status.as_deref(), Some("Success"));
        assert_eq!(
            parse(br#"{"STATUS":"Success","Attached":true}"#)
                .unwrap()
                .attached,
            Some(true)
        );
        for (bad, says) in [
            (&b""[..], "empty"),
            (
                b"{\"status\":\"Success\"}{\"status\":\"Success\"}",
                "2 JSON documents",
            ),
            (b"hello{\"status\":\"Success\"}", "not JSON"),
            (b"{\"status\":\"Success\"}\nok", "text after"),
            (b"null", "null"),
            (b"[]", "not a JSON object"),
            (
                b"{\"status\":\"Success\",\"attached\":\"true\"}",
                "not a bool",
            ),
            (b"\xef\xbb\xbf{\"status\":\"Success\"}", "byte order mark"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert_eq!(
            parse(br#"{"status":"Success","capabilities":null}"#)
                .unwrap()
                .capabilities,
            Some(None)
        );
    }
}
