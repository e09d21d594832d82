//! Which part of the module a key under the prefix belongs to: `control/...` to the control
//! API's state, `upstreams/<upstream>/<host:port>` to membership.

use crate::etcd::control_keys::CONTROL_DIR;

/// The directory of membership keys.
pub const UPSTREAMS_DIR: &str = "upstreams/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// The key relative to `control/`.
    Control(&'a str),
    /// `upstreams/<upstream>/<addr>`.
    Member { upstream: &'a str, addr: &'a str },
    /// Anything else: ignored.
    Other,
}

/// Routes a key relative to the prefix.
pub fn route(key: &str) -> Route<'_> {
    if let Some(rest) = key.strip_prefix(CONTROL_DIR) {
        return Route::Control(rest);
    }
    if let Some((upstream, addr)) = key
        .strip_prefix(UPSTREAMS_DIR)
        .and_then(|rest| rest.split_once('/'))
    {
        if !upstream.is_empty() && !addr.is_empty() && !addr.contains('/') {
            return Route::Member { upstream, addr };
        }
    }
    Route::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_routed_by_directory() {
        assert_eq!(route("control/ex/b"), Route::Control("ex/b"));
        assert_eq!(
            route("upstreams/backend/10.0.0.1:80"),
            Route::Member {
                upstream: "backend",
                addr: "10.0.0.1:80"
            }
        );
        for other in [
            "upstreams/backend",
            "upstreams//a",
            "upstreams/b/",
            "x/y",
            "upstreams/b/c/d",
        ] {
            assert_eq!(route(other), Route::Other, "{other}");
        }
    }
}
