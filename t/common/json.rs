//! JSON status documents (`upstream_healthcheck_status json`), read with serde_json.
use serde_json::Value;

/// Parses a whole body as one JSON value (serde_json: no trailing text, comments or commas).
pub fn strict_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body}"))
}

/// The upstream named `upstream` in a JSON status document.
pub fn json_upstream<'a>(doc: &'a Value, upstream: &str) -> &'a Value {
    doc["msg"]["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == upstream))
        .unwrap_or_else(|| panic!("no upstream {upstream:?} in {doc}"))
}

/// The peer `peer` (`127.0.0.1:PORT`) of `upstream` in a JSON status document, primary or
/// backup.
pub fn json_peer<'a>(doc: &'a Value, upstream: &str, peer: &str) -> &'a Value {
    let u = json_upstream(doc, upstream);
    u["primary"]
        .as_array()
        .into_iter()
        .chain(u["backup"].as_array())
        .flatten()
        .find(|p| p["name"] == peer)
        .unwrap_or_else(|| panic!("no peer {peer} in upstream {upstream:?}: {doc}"))
}

/// A JSON peer taken out by passive checks shows it: `last_error` (the last check's) is
/// "passive", unless a probe passed since the ejection (the first of the `rise` good probes it
/// needs to come back).
pub fn shows_passive_ejection(peer: &Value) -> bool {
    let health = &peer["health"];
    let rising = health["rise_count"].as_u64().unwrap_or(0) > 0;
    health["status"] == "down"
        && (health["last_error"] == "passive" || rising && health["last_error"].is_null())
}
