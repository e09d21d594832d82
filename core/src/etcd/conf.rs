//! The `upstream_healthcheck_etcd URL... [prefix=/nginx/] [timeout=2s]` directive: its
//! arguments parsed into endpoints (addresses only: nginx never resolves a name at run time
//! without blocking), the key prefix and the timeout of each request.

use std::net::SocketAddr;

use crate::parse::{escape, parse_time_ms, MAX_TIME_MS};

const ETCD: &str = "upstream_healthcheck_etcd";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/nginx/";
/// The default timeout of one request to etcd (connect to answer; for a watch, to its start).
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

/// `upstream_healthcheck_etcd`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConf {
    /// The endpoints, tried in turn.
    pub endpoints: Vec<SocketAddr>,
    /// Every key the module reads or writes starts with it; ends with `/`.
    pub prefix: String,
    pub timeout_ms: u64,
}

fn invalid(arg: &[u8], reason: &str) -> String {
    format!(
        "invalid parameter \"{}\" in \"{ETCD}\" directive, {reason}",
        escape(arg)
    )
}

/// `http://IP:port` (an optional trailing `/`): the endpoint's address.
fn parse_url(arg: &[u8]) -> Result<SocketAddr, String> {
    let text = core::str::from_utf8(arg).map_err(|_| invalid(arg, "expected http://IP:port"))?;
    let Some(rest) = text.strip_prefix("http://") else {
        let why = if text.starts_with("https://") {
            "https is not supported, use the http gateway"
        } else {
            "expected http://IP:port"
        };
        return Err(invalid(arg, why));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.parse::<SocketAddr>().map_err(|_| {
        invalid(
            arg,
            "expected http://IP:port with an IP address (host names are not resolved)",
        )
    })
}

/// Parses the directive's arguments.
pub fn parse_etcd(args: &[&[u8]]) -> Result<EtcdConf, String> {
    let mut conf = EtcdConf {
        endpoints: Vec::new(),
        prefix: DEFAULT_PREFIX.to_owned(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
    };
    let (mut prefix_seen, mut timeout_seen) = (false, false);
    for &arg in args {
        if let Some(v) = arg.strip_prefix(b"prefix=") {
            if prefix_seen {
                return Err(invalid(arg, "prefix is given twice"));
            }
            prefix_seen = true;
            let ok =
                v.starts_with(b"/") && v.ends_with(b"/") && v.iter().all(|&b| b.is_ascii_graphic());
            let Some(p) = core::str::from_utf8(v).ok().filter(|_| ok) else {
                return Err(invalid(
                    arg,
                    "the prefix must start and end with \"/\", without spaces",
                ));
            };
            conf.prefix = p.to_owned();
        } else if let Some(v) = arg.strip_prefix(b"timeout=") {
            if timeout_seen {
                return Err(invalid(arg, "timeout is given twice"));
            }
            timeout_seen = true;
            conf.timeout_ms = parse_time_ms(v)
                .filter(|&ms| ms > 0 && ms <= MAX_TIME_MS)
                .ok_or_else(|| invalid(arg, "timeout must be a positive time like 2s or 500ms"))?;
        } else if arg.contains(&b'=') && !arg.starts_with(b"http") {
            return Err(format!(
                "invalid parameter \"{}\" in \"{ETCD}\" directive",
                escape(arg)
            ));
        } else {
            if prefix_seen || timeout_seen {
                return Err(invalid(arg, "the URLs come before the parameters"));
            }
            let addr = parse_url(arg)?;
            if conf.endpoints.contains(&addr) {
                return Err(invalid(arg, "the URL is given twice"));
            }
            conf.endpoints.push(addr);
        }
    }
    if conf.endpoints.is_empty() {
        return Err(format!(
            "invalid number of arguments in \"{ETCD}\" directive, at least one URL is needed"
        ));
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<EtcdConf, String> {
        let v: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_etcd(&v)
    }

    #[test]
    fn urls_and_parameters() {
        let c = p(&["http://127.0.0.1:2379"]).unwrap();
        assert_eq!(c.endpoints, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(c.prefix, "/nginx/");
        assert_eq!(c.timeout_ms, 2000);
        let c = p(&[
            "http://127.0.0.1:2379/",
            "http://[::1]:2380",
            "prefix=/fleet/a/",
            "timeout=500ms",
        ])
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[1], "[::1]:2380".parse().unwrap());
        assert_eq!(c.prefix, "/fleet/a/");
        assert_eq!(c.timeout_ms, 500);
    }

    #[test]
    fn errors_worded_like_nginx() {
        assert_eq!(
            p(&["http://etcd.local:2379"]).unwrap_err(),
            "invalid parameter \"http://etcd.local:2379\" in \"upstream_healthcheck_etcd\" \
             directive, expected http://IP:port with an IP address (host names are not resolved)"
        );
        assert!(p(&["https://127.0.0.1:2379"])
            .unwrap_err()
            .ends_with("https is not supported, use the http gateway"));
        assert!(p(&["127.0.0.1:2379"])
            .unwrap_err()
            .ends_with("expected http://IP:port"));
        assert!(p(&["http://127.0.0.1"]).is_err());
        assert_eq!(
            p(&["http://127.0.0.1:2379", "bogus=1"]).unwrap_err(),
            "invalid parameter \"bogus=1\" in \"upstream_healthcheck_etcd\" directive"
        );
        assert!(p(&["http://127.0.0.1:2379", "prefix=nginx"])
            .unwrap_err()
            .contains("must start and end with"));
        assert!(p(&["http://127.0.0.1:2379", "timeout=0"])
            .unwrap_err()
            .contains("positive time"));
        assert!(p(&["prefix=/a/"]).unwrap_err().contains("at least one URL"));
        assert!(p(&["http://127.0.0.1:1", "http://127.0.0.1:1"])
            .unwrap_err()
            .contains("twice"));
        assert!(
            p(&["http://127.0.0.1:1", "timeout=1s", "http://127.0.0.1:2"])
                .unwrap_err()
                .contains("come before")
        );
    }
}
