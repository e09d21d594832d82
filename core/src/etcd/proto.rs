//! etcd's v3 API through its HTTP/JSON gateway (`/v3/...`, etcd 3.4): the requests the module
//! sends, as whole HTTP/1.1 requests, and the answers it reads (keys and values in base64,
//! 64-bit numbers as JSON strings).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// The end of the range that holds every key starting with `prefix`: the prefix with its last
/// byte incremented (bytes of 0xff dropped first); `\0` for "every key" when nothing is left.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(v: &[u8]) -> String {
    B64.encode(v)
}

/// A POST of `body` to `path` on `host` (`IP:port`), on a connection that closes after the
/// answer.
pub fn http_post(path: &str, host: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `/v3/kv/range` of every key under `prefix`.
pub fn range_body(prefix: &str) -> Value {
    json!({
        "key": b64(prefix.as_bytes()),
        "range_end": b64(&prefix_range_end(prefix.as_bytes())),
    })
}

/// `/v3/watch` of every key under `prefix`, from `start_revision`.
pub fn watch_body(prefix: &str, start_revision: i64) -> Value {
    json!({"create_request": {
        "key": b64(prefix.as_bytes()),
        "range_end": b64(&prefix_range_end(prefix.as_bytes())),
        "start_revision": start_revision.to_string(),
    }})
}

/// `/v3/kv/put` of `key` = `value`, attached to `lease` when not 0.
pub fn put_body(key: &str, value: &[u8], lease: i64) -> Value {
    let mut v = json!({"key": b64(key.as_bytes()), "value": b64(value)});
    if lease != 0 {
        v["lease"] = Value::String(lease.to_string());
    }
    v
}

/// `/v3/kv/deleterange` of one key.
pub fn delete_body(key: &str) -> Value {
    json!({"key": b64(key.as_bytes())})
}

/// `/v3/lease/grant` of a lease of `ttl_secs`.
pub fn lease_grant_body(ttl_secs: u64) -> Value {
    json!({"TTL": ttl_secs.to_string()})
}

/// `/v3/lease/revoke` of lease `id`.
pub fn lease_revoke_body(id: i64) -> Value {
    json!({"ID": id.to_string()})
}

/// A 64-bit number as the gateway writes it: a string, or a number.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A field holding a 64-bit number, 0 when absent (the gateway omits zero values).
fn int_field(v: &Value, name: &str) -> Result<i64, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => int(x).ok_or_else(|| format!("\"{name}\" is not a number")),
    }
}

fn bytes_field(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|_| format!("\"{name}\" is not base64")),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

/// The revision of an answer's header.
fn header_revision(v: &Value) -> Result<i64, String> {
    let header = v.get("header").ok_or("no header")?;
    int_field(header, "revision")
}

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

fn kv(v: &Value) -> Result<Kv, String> {
    Ok(Kv {
        key: bytes_field(v, "key")?,
        value: bytes_field(v, "value")?,
    })
}

/// Parses a JSON body; an error body (`{"error":..,"message":..}`) becomes its message.
pub fn parse_body(status: u16, body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        if (200..300).contains(&status) {
            "etcd answered with invalid JSON".to_owned()
        } else {
            format!("etcd answered status {status}")
        }
    })?;
    if let Some(message) = error_message(&v) {
        return Err(format!("etcd error: {message}"));
    }
    if !(200..300).contains(&status) {
        return Err(format!("etcd answered status {status}"));
    }
    Ok(v)
}

/// The message of an error answer: `{"error":"..","code":N,"message":".."}` (unary) or
/// `{"error":{"grpc_code":N,"message":".."}}` (stream).
fn error_message(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let m = e
        .get("message")
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .unwrap_or("unknown error");
    Some(m.chars().take(200).collect())
}

/// A `/v3/kv/range` answer: the store's revision and the keys.
pub fn parse_range(v: &Value) -> Result<(i64, Vec<Kv>), String> {
    let revision = header_revision(v)?;
    let kvs = match v.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(kv).collect::<Result<_, _>>()?,
        Some(_) => return Err("\"kvs\" is not a list".to_owned()),
    };
    if v.get("more").and_then(Value::as_bool) == Some(true) {
        return Err("the range answer is incomplete".to_owned());
    }
    Ok((revision, kvs))
}

/// A `/v3/lease/grant` answer: the lease's id.
pub fn parse_lease_grant(v: &Value) -> Result<i64, String> {
    match int_field(v, "ID")? {
        0 => Err("no lease id".to_owned()),
        id => Ok(id),
    }
}

/// A change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(Vec<u8>),
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMsg {
    /// The watch is in place.
    Created,
    /// Changes, up to `revision`.
    Events { revision: i64, events: Vec<Event> },
    /// The start revision was compacted away: start again from a full read.
    Compacted(i64),
    /// etcd ended the watch (or answered an error).
    Canceled(String),
}

/// Parses one message of the `/v3/watch` stream: `{"result":{...}}` (or `{"error":{...}}`).
pub fn parse_watch_msg(v: &Value) -> Result<WatchMsg, String> {
    if let Some(m) = error_message(v) {
        return Ok(WatchMsg::Canceled(m));
    }
    let r = v
        .get("result")
        .ok_or("a watch message without \"result\"")?;
    let compact = int_field(r, "compact_revision")?;
    if compact != 0 {
        return Ok(WatchMsg::Compacted(compact));
    }
    if r.get("canceled").and_then(Value::as_bool) == Some(true) {
        let reason = r
            .get("cancel_reason")
            .and_then(Value::as_str)
            .unwrap_or("the watch was canceled");
        return Ok(WatchMsg::Canceled(reason.chars().take(200).collect()));
    }
    if r.get("created").and_then(Value::as_bool) == Some(true) {
        return Ok(WatchMsg::Created);
    }
    let revision = header_revision(r)?;
    let mut events = Vec::new();
    if let Some(list) = r.get("events") {
        let list = list.as_array().ok_or("\"events\" is not a list")?;
        for e in list {
            let kv = kv(e.get("kv").ok_or("an event without \"kv\"")?)?;
            // PUT is the enum's zero: the gateway leaves it out.
            events.push(match e.get("type").and_then(Value::as_str) {
                None | Some("PUT") => Event::Put(kv),
                Some("DELETE") => Event::Delete(kv.key),
                Some(t) => return Err(format!("unknown event type {t:?}")),
            });
        }
    }
    Ok(WatchMsg::Events { revision, events })
}

/// Takes the complete JSON values at the start of `buf` (a stream's body so far), leaving an
/// incomplete last one; an error when the bytes are not JSON.
pub fn take_json_values(buf: &mut Vec<u8>) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut consumed = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        loop {
            match it.next() {
                Some(Ok(v)) => {
                    consumed = it.byte_offset();
                    out.push(v);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err("etcd sent invalid JSON in the watch".to_owned()),
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
    }
    buf.drain(..consumed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_of_a_prefix() {
        assert_eq!(prefix_range_end(b"/nginx/"), b"/nginx0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn requests() {
        let r = String::from_utf8(http_post(
            "/v3/kv/range",
            "127.0.0.1:2379",
            &range_body("/n/"),
        ))
        .unwrap();
        assert!(r.starts_with("POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"));
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v, json!({"key": "L24v", "range_end": "L24w"}));
        assert_eq!(
            watch_body("/n/", 8)["create_request"]["start_revision"],
            "8"
        );
        assert_eq!(
            put_body("k", b"v", 0),
            json!({"key": "aw==", "value": "dg=="})
        );
        assert_eq!(put_body("k", b"v", 7)["lease"], "7");
        assert_eq!(delete_body("k"), json!({"key": "aw=="}));
        assert_eq!(lease_grant_body(30), json!({"TTL": "30"}));
        assert_eq!(lease_revoke_body(5), json!({"ID": "5"}));
    }

    #[test]
    fn range_answers() {
        let v: Value = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","revision":"12"},"kvs":[{"key":"L24vYQ==","value":"MQ==","mod_revision":"3"}],"count":"1"}"#,
        )
        .unwrap();
        let (rev, kvs) = parse_range(&v).unwrap();
        assert_eq!(rev, 12);
        assert_eq!(
            kvs,
            vec![Kv {
                key: b"/n/a".to_vec(),
                value: b"1".to_vec()
            }]
        );
        let empty: Value = serde_json::from_str(r#"{"header":{"revision":"4"}}"#).unwrap();
        assert_eq!(parse_range(&empty).unwrap(), (4, vec![]));
        let bad: Value =
            serde_json::from_str(r#"{"header":{"revision":"4"},"kvs":[{"key":"%%"}]}"#).unwrap();
        assert!(parse_range(&bad).is_err());
        assert!(parse_range(&json!({})).is_err());
    }

    #[test]
    fn error_bodies() {
        let e = parse_body(400, br#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#);
        assert_eq!(
            e.unwrap_err(),
            "etcd error: etcdserver: requested lease not found"
        );
        assert_eq!(
            parse_body(502, b"Bad Gateway").unwrap_err(),
            "etcd answered status 502"
        );
        assert_eq!(
            parse_body(200, b"{").unwrap_err(),
            "etcd answered with invalid JSON"
        );
        assert!(parse_body(200, b"{}").is_ok());
        assert_eq!(
            parse_lease_grant(&json!({"ID": "694d77aa9e38260f", "TTL": "5"})).ok(),
            None
        );
        assert_eq!(
            parse_lease_grant(&json!({"ID": "7587862", "TTL": "5"})).unwrap(),
            7587862
        );
    }

    #[test]
    fn watch_messages() {
        let m = |s: &str| parse_watch_msg(&serde_json::from_str(s).unwrap()).unwrap();
        assert_eq!(
            m(r#"{"result":{"header":{"revision":"5"},"created":true}}"#),
            WatchMsg::Created
        );
        assert_eq!(
            m(
                r#"{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"YQ==","value":"Yg==","mod_revision":"6"}},{"type":"DELETE","kv":{"key":"Yw==","mod_revision":"6"}}]}}"#
            ),
            WatchMsg::Events {
                revision: 6,
                events: vec![
                    Event::Put(Kv {
                        key: b"a".to_vec(),
                        value: b"b".to_vec()
                    }),
                    Event::Delete(b"c".to_vec())
                ]
            }
        );
        assert_eq!(
            m(r#"{"result":{"header":{"revision":"9"},"compact_revision":"7","canceled":true}}"#),
            WatchMsg::Compacted(7)
        );
        assert_eq!(
            m(r#"{"result":{"header":{},"canceled":true,"cancel_reason":"gone"}}"#),
            WatchMsg::Canceled("gone".into())
        );
        assert_eq!(
            m(r#"{"error":{"grpc_code":14,"http_code":503,"message":"unavailable"}}"#),
            WatchMsg::Canceled("unavailable".into())
        );
        assert!(parse_watch_msg(&json!({"x": 1})).is_err());
    }

    #[test]
    fn json_values_split_from_a_stream() {
        let mut buf = br#"{"a":1}
{"b":2}{"c""#
            .to_vec();
        let vs = take_json_values(&mut buf).unwrap();
        assert_eq!(vs, vec![json!({"a":1}), json!({"b":2})]);
        assert_eq!(buf, br#"{"c""#);
        buf.extend_from_slice(b":3}\n");
        assert_eq!(take_json_values(&mut buf).unwrap(), vec![json!({"c":3})]);
        assert!(buf.iter().all(u8::is_ascii_whitespace));
        let mut bad = b"{]".to_vec();
        assert!(take_json_values(&mut bad).is_err());
    }
}
