//! etcd as the fleet's source of truth (`upstream_healthcheck_etcd`): the pure parts.
//! `conf` parses the directive, `proto` speaks the v3 JSON gateway, `http` reads its HTTP
//! answers, `link` keeps the connection (backoff, endpoints, the watch lease, outages) and
//! `control_keys` lays out the control API's keys, `route` tells whose a key is.

pub mod conf;
pub mod control_keys;
pub mod http;
pub mod link;
pub mod proto;
pub mod route;
