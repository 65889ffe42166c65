//! Just enough of Kubernetes' protobuf encoding to read what `kubectl create secret|configmap|
//! namespace` sends: kubectl's typed clients write built-ins as protobuf and, unlike for CBOR,
//! do not fall back to JSON on 415. Responses are always JSON, which clients accept.
//!
//! The envelope is the magic `k8s\0` then a `runtime.Unknown` (typeMeta = 1 {apiVersion = 1,
//! kind = 2}, raw = 2); `raw` holds the object. Only Secret, ConfigMap and Namespace are decoded,
//! with their ObjectMeta's name, generateName, namespace, labels, annotations and finalizers.

use base64::Engine as _;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message: its number and payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                let bytes = &buf[pos..end];
                pos = end;
                Field::Bytes(bytes)
            }
            1 => {
                pos += 8;
                Field::Varint(0)
            }
            5 => {
                pos += 4;
                Field::Varint(0)
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// A `map<string, V>` entry (key = 1, value = 2).
fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(
    map: &mut Map<String, Value>,
    key: &str,
    bytes: &[u8],
    binary: bool,
) -> Result<(), String> {
    let (k, v) = map_entry(bytes)?;
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    let value = if binary {
        Value::String(base64::engine::general_purpose::STANDARD.encode(v))
    } else {
        Value::String(text(v)?)
    };
    if let Value::Object(m) = entry {
        m.insert(k, value);
    }
    Ok(())
}

fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                meta.insert("name".into(), json!(text(b)?));
            }
            (2, Field::Bytes(b)) => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            (3, Field::Bytes(b)) => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            (6, Field::Bytes(b)) => {
                meta.insert("resourceVersion".into(), json!(text(b)?));
            }
            (11, Field::Bytes(b)) => insert_entry(&mut meta, "labels", b, false)?,
            (12, Field::Bytes(b)) => insert_entry(&mut meta, "annotations", b, false)?,
            (14, Field::Bytes(b)) => {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Value::Array(a) = list {
                    a.push(json!(text(b)?));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(meta))
}

/// Where a kind keeps its fields (besides `metadata = 1`).
struct Layout {
    /// `(field number, JSON name, values are bytes)` of its maps.
    maps: &'static [(u64, &'static str, bool)],
    /// `(field number, JSON name)` of its string fields.
    strings: &'static [(u64, &'static str)],
    /// Field number of `immutable`.
    immutable: Option<u64>,
}

fn layout(api_version: &str, kind: &str) -> Option<Layout> {
    match (api_version, kind) {
        ("v1", "Secret") => Some(Layout {
            maps: &[(2, "data", true), (4, "stringData", false)],
            strings: &[(3, "type")],
            immutable: Some(5),
        }),
        ("v1", "ConfigMap") => Some(Layout {
            maps: &[(2, "data", false), (3, "binaryData", true)],
            strings: &[],
            immutable: Some(4),
        }),
        ("v1", "Namespace") => Some(Layout {
            maps: &[],
            strings: &[],
            immutable: None,
        }),
        _ => None,
    }
}

/// Decodes a protobuf-encoded Secret, ConfigMap or Namespace into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (tn, tf) in fields(type_meta)? {
                    match (tn, tf) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let layout = layout(&api_version, &kind)
        .ok_or_else(|| format!("protobuf for {api_version} {kind} is not supported"))?;
    for (n, f) in fields(raw)? {
        match f {
            Field::Bytes(b) if n == 1 => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            Field::Bytes(b) => {
                if let Some((_, name, binary)) = layout.maps.iter().find(|(num, _, _)| *num == n) {
                    insert_entry(&mut obj, name, b, *binary)?;
                } else if let Some((_, name)) = layout.strings.iter().find(|(num, _)| *num == n) {
                    obj.insert((*name).into(), json!(text(b)?));
                }
            }
            Field::Varint(v) if Some(n) == layout.immutable => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            Field::Varint(_) => {}
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(number: u64, wire: u64) -> Vec<u8> {
        encode_varint((number << 3) | wire)
    }

    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = key(number, 2);
        out.extend(encode_varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat()
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            bytes_field(1, api_version.as_bytes()),
            bytes_field(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, raw),
            bytes_field(4, b"application/vnd.kubernetes.protobuf"),
        ]
        .concat()
    }

    #[test]
    fn decodes_a_secret_as_kubectl_sends_it() {
        let meta = [
            bytes_field(1, b"onboarding"),
            bytes_field(3, b"default"),
            bytes_field(11, &entry("app", b"x")),
            bytes_field(14, b"a/b"),
        ]
        .concat();
        let raw = [
            bytes_field(1, &meta),
            bytes_field(2, &entry("apiKey", b"\x00secret")),
            bytes_field(3, b"Opaque"),
            key(5, 0),
            vec![1],
        ]
        .concat();
        let obj = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "onboarding", "namespace": "default",
                             "labels": {"app": "x"}, "finalizers": ["a/b"]},
                "data": {"apiKey": "AHNlY3JldA=="}, "type": "Opaque", "immutable": true,
            })
        );
    }

    #[test]
    fn decodes_configmaps_and_namespaces_and_refuses_the_rest() {
        let raw = [
            bytes_field(1, &bytes_field(1, b"cm")),
            bytes_field(2, &entry("k", b"v")),
        ]
        .concat();
        let cm = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(cm["data"], json!({"k": "v"}));
        let ns = decode(&envelope(
            "v1",
            "Namespace",
            &bytes_field(1, &bytes_field(1, b"team")),
        ))
        .unwrap();
        assert_eq!(ns["metadata"]["name"], "team");
        assert!(decode(&envelope("apps/v1", "Deployment", &[])).is_err());
        assert!(decode(b"{}").is_err());
        assert!(decode(&[b"k8s\0".as_slice(), &[0x0a, 0x05, 0x01]].concat()).is_err());
    }
}
