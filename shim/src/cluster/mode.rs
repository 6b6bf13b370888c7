//! Connected or local: what each sync result and each lapse does (DESIGN.md "Cluster mode").
//!
//! - **Connecting** (from start to the first good sync): leases of 0 that lapse after two sync
//!   intervals, so nothing is dispatched on a guess while the first round trip is in flight.
//! - **Connected**: every good sync's leases and remote rates are applied, the leases valid for two
//!   sync intervals from when that sync was sent.
//! - **Local** (the leases lapsed: no good sync for two intervals): capacity
//!   `max(1, ⌊max_inflight / replicas last seen⌋)`, rates local. Back to connected after
//!   [`GOOD_SYNCS_TO_RECONNECT`] good syncs in a row; one failure restarts the count.
//!
//! Each transition is one log line and flips `flowgate_cluster_connected`.

/// Good syncs in a row that bring a local replica back.
pub const GOOD_SYNCS_TO_RECONNECT: u32 = 2;
/// Syncs after coming back during which replicas seen before the outage but not back yet are
/// still expected (their local shares kept free): as long as a dead replica's keys live.
pub const RECONNECT_GRACE_SYNCS: u32 = 3;

/// Where the replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No good sync yet.
    Connecting,
    /// Sharing leases and rates.
    Connected,
    /// On local state.
    Local,
}

/// What to do with a good sync's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply its leases and remote rates.
    Apply,
    /// Stay local (with the replica count it saw).
    StayLocal,
}

/// The state machine.
#[derive(Clone, Debug)]
pub struct Machine {
    mode: Mode,
    /// Good syncs in a row while local.
    streak: u32,
    /// Live replicas at the last good sync (≥ 1); in local mode never lowered (a replica not
    /// back yet still runs on its local share).
    replicas: u32,
    /// Replicas seen when the leases lapsed.
    expected: u32,
    /// Good syncs left during which `expected` holds after coming back.
    grace: u32,
}

impl Default for Machine {
    fn default() -> Self {
        Self { mode: Mode::Connecting, streak: 0, replicas: 1, expected: 0, grace: 0 }
    }
}

impl Machine {
    /// Where it is.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Replicas last seen (≥ 1): the local-mode divisor.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Replicas the script should count as present even if it does not see them (their local
    /// shares stay free): those seen before the outage, while local and for
    /// [`RECONNECT_GRACE_SYNCS`] syncs after; else 0.
    pub fn expected(&self) -> u32 {
        if self.mode == Mode::Local || self.grace > 0 {
            self.expected
        } else {
            0
        }
    }

    /// A good sync that saw `replicas` live replicas: what to do, and whether the mode changed.
    pub fn good(&mut self, replicas: u32) -> (Step, bool) {
        let replicas = replicas.max(1);
        self.replicas = if self.mode == Mode::Local { self.replicas.max(replicas) } else { replicas };
        match self.mode {
            Mode::Connecting | Mode::Connected => {
                self.grace = self.grace.saturating_sub(1);
                let changed = self.mode != Mode::Connected;
                self.mode = Mode::Connected;
                (Step::Apply, changed)
            }
            Mode::Local => {
                self.streak += 1;
                if self.streak >= GOOD_SYNCS_TO_RECONNECT {
                    self.streak = 0;
                    self.grace = RECONNECT_GRACE_SYNCS;
                    self.replicas = replicas;
                    self.mode = Mode::Connected;
                    (Step::Apply, true)
                } else {
                    (Step::StayLocal, false)
                }
            }
        }
    }

    /// A failed sync (nothing applied; the leases lapse by themselves).
    pub fn failed(&mut self) {
        self.streak = 0;
    }

    /// The leases lapsed: local mode. `true` if that is a change.
    pub fn lapsed(&mut self) -> bool {
        self.streak = 0;
        self.grace = 0;
        if self.mode != Mode::Local {
            self.expected = self.replicas;
        }
        let changed = self.mode != Mode::Local;
        self.mode = Mode::Local;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_good_sync_connects() {
        let mut m = Machine::default();
        assert_eq!(m.good(3), (Step::Apply, true));
        assert_eq!(m.good(3), (Step::Apply, false));
        assert_eq!((m.mode(), m.replicas()), (Mode::Connected, 3));
    }

    #[test]
    fn a_lapse_goes_local_and_two_good_syncs_in_a_row_come_back() {
        let mut m = Machine::default();
        m.good(3);
        assert!(m.lapsed());
        assert!(!m.lapsed(), "one transition");
        assert_eq!(m.replicas(), 3, "the divisor is the count last seen");
        assert_eq!(m.expected(), 3);
        assert_eq!(m.good(1), (Step::StayLocal, false));
        assert_eq!(m.replicas(), 3, "local: the others not back yet keep their shares");
        m.failed();
        assert_eq!(m.good(2), (Step::StayLocal, false), "a failure restarts the count");
        assert_eq!(m.good(2), (Step::Apply, true));
        assert_eq!((m.mode(), m.replicas()), (Mode::Connected, 2));
        for _ in 0..RECONNECT_GRACE_SYNCS {
            assert_eq!(m.expected(), 3, "still expected just after coming back");
            m.good(2);
        }
        assert_eq!(m.expected(), 0);
    }

    #[test]
    fn never_connected_lapses_to_local_with_one_replica() {
        let mut m = Machine::default();
        assert!(m.lapsed());
        assert_eq!((m.mode(), m.replicas()), (Mode::Local, 1));
        assert_eq!(m.good(0).0, Step::StayLocal);
        assert_eq!(m.replicas(), 1, "never below 1");
    }
}
