//! The module's log macros: every message goes through these, prefixed with the module name
//! (`hc_log!` at a level, `hc_debug!` for the life of a probe); shared with the stream module.

pub(crate) use upstream_healthcheck_glue::{hc_debug, hc_log};
