//! etcd as the fleet's source of truth.
mod common;
