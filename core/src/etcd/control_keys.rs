//! The control API's state in etcd: one key per exclusion or manual down, under
//! `<prefix>control/`:
//!
//! - `control/ex/<upstream>`: the upstream is excluded from checking;
//! - `control/gray/<upstream>/<peer>`: the peer is forced down (gray release).
//!
//! `<upstream>` has `%` and `/` percent-encoded; `<peer>` is the rest of the key, as nginx
//! names the peer. The value is JSON: `{"until": <Unix ms>}` for a ttl (the key also has an
//! etcd lease of that ttl), `{}` without one.

use serde_json::{json, Value};

use crate::control::Subject;

/// Keys under the prefix that belong to the control API.
pub const CONTROL_DIR: &str = "control/";

fn encode(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn decode(seg: &str) -> Option<String> {
    let mut out = String::with_capacity(seg.len());
    let mut rest = seg;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" | "2f" => '/',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The key of `subject`, relative to the prefix.
pub fn control_key(subject: &Subject) -> String {
    match subject {
        Subject::Exclusion { upstream } => format!("{CONTROL_DIR}ex/{}", encode(upstream)),
        Subject::ManualDown { upstream, peer } => {
            format!("{CONTROL_DIR}gray/{}/{peer}", encode(upstream))
        }
    }
}

/// What a key (relative to `control/`) names; `None` for a key of another shape.
pub fn parse_control_key(rel: &str) -> Option<Subject> {
    if let Some(up) = rel.strip_prefix("ex/") {
        if up.is_empty() || up.contains('/') {
            return None;
        }
        return Some(Subject::Exclusion {
            upstream: decode(up)?,
        });
    }
    let (up, peer) = rel.strip_prefix("gray/")?.split_once('/')?;
    if up.is_empty() || peer.is_empty() {
        return None;
    }
    Some(Subject::ManualDown {
        upstream: decode(up)?,
        peer: peer.to_owned(),
    })
}

/// The value written for a ttl ending at `until_unix_ms` (0: no ttl).
pub fn control_value(until_unix_ms: u64) -> Vec<u8> {
    let v = if until_unix_ms == 0 {
        json!({})
    } else {
        json!({ "until": until_unix_ms })
    };
    v.to_string().into_bytes()
}

/// When the state a value carries ends (Unix ms), 0 for never; a value that is not what
/// `control_value` writes counts as "never" (the key's existence is what matters).
pub fn control_until(value: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(value)
        .ok()
        .and_then(|v| v.get("until")?.as_u64())
        .unwrap_or(0)
}

/// The local monotonic end of a state ending at `until_unix_ms`: `u64::MAX` for never; at
/// least `now_ms + 1` for an end already past (it ends at the next look).
pub fn local_expiry(until_unix_ms: u64, now_unix_ms: u64, now_ms: u64) -> u64 {
    if until_unix_ms == 0 {
        return u64::MAX;
    }
    now_ms.saturating_add(until_unix_ms.saturating_sub(now_unix_ms).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let ex = Subject::Exclusion {
            upstream: "a/b%c".into(),
        };
        assert_eq!(control_key(&ex), "control/ex/a%2Fb%25c");
        assert_eq!(parse_control_key("ex/a%2Fb%25c"), Some(ex));
        let gray = Subject::ManualDown {
            upstream: "backend".into(),
            peer: "unix:/run/app.sock".into(),
        };
        assert_eq!(
            control_key(&gray),
            "control/gray/backend/unix:/run/app.sock"
        );
        assert_eq!(
            parse_control_key("gray/backend/unix:/run/app.sock"),
            Some(gray)
        );
        for bad in [
            "ex/", "ex/a/b", "gray/a", "gray//p", "gray/a/", "other/x", "ex/%zz",
        ] {
            assert_eq!(parse_control_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_and_expiry() {
        assert_eq!(control_until(&control_value(0)), 0);
        assert_eq!(control_until(&control_value(1234)), 1234);
        assert_eq!(control_until(b"garbage"), 0);
        assert_eq!(local_expiry(0, 1000, 50), u64::MAX);
        assert_eq!(local_expiry(4000, 1000, 50), 3050);
        assert_eq!(local_expiry(500, 1000, 50), 51);
    }
}
