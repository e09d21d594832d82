//! Panic mode (`panic_threshold=P%`, Envoy's healthy panic threshold): when fewer than P percent
//! of an upstream's primary peers are up by their checks, the checks' verdicts are not applied
//! to it, so a checker that declares everything down cannot take the whole site down.
//!
//! Which peers count: primary peers not marked `down` in nginx.conf (backups never do). The
//! count of those up is kept per upstream and changed by one for each change of verdict, so
//! deciding costs O(1) per change; a recount over one upstream's peers happens only when its
//! checks restart and when a reload lays out the zone.

use core::fmt;

use crate::escape::LogEscaped;

/// `panic_threshold=P%` applied to one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanicRule {
    /// P, from 1 to 100.
    pub threshold: u8,
    /// The upstream's primary peers not marked `down` in nginx.conf.
    pub primaries: u32,
}

impl PanicRule {
    /// In panic when fewer than `threshold` percent of the primaries are up (exactly at the
    /// threshold is not panic). An upstream without such primaries is never in panic: there is
    /// nothing whose verdict could be set aside.
    pub fn in_panic(&self, up: u32) -> bool {
        self.primaries > 0
            && u64::from(up) * 100 < u64::from(self.threshold) * u64::from(self.primaries)
    }
}

/// Whether a peer's verdict counts towards panic: a primary not marked `down` in nginx.conf.
pub fn counts(backup: bool, config_down: bool) -> bool {
    !backup && !config_down
}

/// Panic state of one upstream, kept in the shared zone: plain fixed-size integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PanicState {
    /// Counted peers (see `counts`) that are up by their checks.
    pub up: u32,
    /// 1 while in panic.
    pub active: u32,
    /// Times the upstream entered panic.
    pub entered: u64,
}

/// A change of panic state, to log once and to apply in every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicChange {
    Entered,
    Left,
}

impl PanicState {
    pub fn is_active(&self) -> bool {
        self.active != 0
    }

    /// One counted peer's verdict changed (to up when `up`).
    pub fn on_transition(&mut self, up: bool, rule: Option<&PanicRule>) -> Option<PanicChange> {
        self.up = if up {
            self.up.saturating_add(1)
        } else {
            self.up.saturating_sub(1)
        };
        self.settle(rule)
    }

    /// The count of counted peers up, taken afresh (checks restarted, a reload).
    pub fn recount(&mut self, up: u32, rule: Option<&PanicRule>) -> Option<PanicChange> {
        self.up = up;
        self.settle(rule)
    }

    /// Enters or leaves panic as the count and the rule say.
    fn settle(&mut self, rule: Option<&PanicRule>) -> Option<PanicChange> {
        let now = rule.is_some_and(|r| r.in_panic(self.up));
        if now == self.is_active() {
            return None;
        }
        self.active = now as u32;
        if now {
            self.entered = self.entered.wrapping_add(1);
            Some(PanicChange::Entered)
        } else {
            Some(PanicChange::Left)
        }
    }
}

/// The warn line of a change (without the module's prefix):
/// `upstream "backend" is in panic: 1 of 4 primary peers up, below panic_threshold=50%; verdicts
/// are not applied`, or `... leaves panic: ...; verdicts apply again`.
pub struct PanicMessage<'a> {
    pub upstream: &'a str,
    pub change: PanicChange,
    pub up: u32,
    /// `None` when the reload that ended the panic removed `panic_threshold`.
    pub rule: Option<PanicRule>,
}

impl fmt::Display for PanicMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = LogEscaped(self.upstream);
        let primaries = self.rule.map_or(0, |r| r.primaries);
        let threshold = |f: &mut fmt::Formatter<'_>| match self.rule {
            Some(r) => write!(f, "panic_threshold={}%", r.threshold),
            None => f.write_str("no panic_threshold"),
        };
        match self.change {
            PanicChange::Entered => {
                write!(
                    f,
                    "upstream \"{name}\" is in panic: {} of {primaries} primary peers up, below ",
                    self.up
                )?;
                threshold(f)?;
                f.write_str("; verdicts are not applied")
            }
            PanicChange::Left => {
                write!(f, "upstream \"{name}\" leaves panic: ")?;
                if self.rule.is_some() {
                    write!(f, "{} of {primaries} primary peers up, ", self.up)?;
                }
                threshold(f)?;
                f.write_str("; verdicts apply again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: u8, primaries: u32) -> PanicRule {
        PanicRule {
            threshold,
            primaries,
        }
    }

    #[test]
    fn panic_is_fewer_than_the_threshold_exactly_at_it_is_not() {
        let r = rule(50, 4);
        assert!(r.in_panic(0) && r.in_panic(1));
        assert!(!r.in_panic(2), "2 of 4 is 50%: not fewer than 50%");
        assert!(!r.in_panic(4));
        let r = rule(100, 3);
        assert!(r.in_panic(2) && !r.in_panic(3));
        let r = rule(1, 1000);
        assert!(r.in_panic(0));
        assert!(r.in_panic(9), "9 of 1000 is 0.9%");
        assert!(!r.in_panic(10), "10 of 1000 is 1%");
        let r = rule(34, 3);
        assert!(r.in_panic(1) && !r.in_panic(2), "1 of 3 is 33.3%");
    }

    #[test]
    fn an_upstream_without_counted_primaries_is_never_in_panic() {
        assert!(!rule(100, 0).in_panic(0));
        let mut s = PanicState::default();
        assert_eq!(s.recount(0, Some(&rule(100, 0))), None);
    }

    #[test]
    fn only_primaries_not_marked_down_count() {
        assert!(counts(false, false));
        assert!(!counts(true, false), "a backup");
        assert!(!counts(false, true), "marked down in nginx.conf");
        assert!(!counts(true, true));
    }

    #[test]
    fn entering_and_leaving_happen_once_each_way_and_entries_are_counted() {
        let r = rule(50, 4);
        let mut s = PanicState::default();
        assert_eq!(s.recount(4, Some(&r)), None);
        assert_eq!(s.on_transition(false, Some(&r)), None, "3 of 4");
        assert_eq!(s.on_transition(false, Some(&r)), None, "2 of 4");
        assert_eq!(
            s.on_transition(false, Some(&r)),
            Some(PanicChange::Entered),
            "1 of 4"
        );
        assert!(s.is_active());
        assert_eq!(s.on_transition(false, Some(&r)), None, "0 of 4: still");
        assert_eq!(s.on_transition(true, Some(&r)), None, "1 of 4: still");
        assert_eq!(s.on_transition(true, Some(&r)), Some(PanicChange::Left));
        assert!(!s.is_active());
        assert_eq!(s.on_transition(false, Some(&r)), Some(PanicChange::Entered));
        assert_eq!((s.up, s.entered), (1, 2));
    }

    #[test]
    fn without_a_rule_the_count_is_kept_and_there_is_no_panic() {
        let mut s = PanicState::default();
        assert_eq!(s.recount(2, None), None);
        assert_eq!(s.on_transition(false, None), None);
        assert_eq!(s.on_transition(false, None), None);
        assert_eq!(s.on_transition(false, None), None, "never below zero");
        assert_eq!((s.up, s.active), (0, 0));
    }

    #[test]
    fn a_reload_that_removes_the_threshold_or_adds_peers_ends_the_panic() {
        let mut s = PanicState::default();
        assert_eq!(s.recount(1, Some(&rule(50, 4))), Some(PanicChange::Entered));
        assert_eq!(s.recount(1, None), Some(PanicChange::Left));
        assert_eq!(s.recount(1, Some(&rule(50, 4))), Some(PanicChange::Entered));
        assert_eq!(s.recount(1, Some(&rule(50, 2))), Some(PanicChange::Left));
        assert_eq!(s.entered, 2);
    }

    #[test]
    fn the_log_lines_say_what_happened_and_escape_the_name() {
        let entered = PanicMessage {
            upstream: "backend",
            change: PanicChange::Entered,
            up: 1,
            rule: Some(rule(50, 4)),
        };
        assert_eq!(
            entered.to_string(),
            "upstream \"backend\" is in panic: 1 of 4 primary peers up, below \
             panic_threshold=50%; verdicts are not applied"
        );
        let left = PanicMessage {
            change: PanicChange::Left,
            up: 2,
            ..entered
        };
        assert_eq!(
            left.to_string(),
            "upstream \"backend\" leaves panic: 2 of 4 primary peers up, panic_threshold=50%; \
             verdicts apply again"
        );
        let removed = PanicMessage {
            upstream: "a\"b",
            rule: None,
            ..left
        };
        assert_eq!(
            removed.to_string(),
            "upstream \"a\\x22b\" leaves panic: no panic_threshold; verdicts apply again"
        );
    }
}
