//! The peer link heartbeat: when to send `PING`, and when a silent neighbour counts as dead. A leaf (no
//! sockets, no clock of its own).
//!
//! TCP alone notices a neighbour that vanished (power cut, cable, a frozen VM, a partition that drops
//! packets) only when a write times out or keepalive probes fail: about 20 s with the socket options
//! peer links use, during which records flood into a kernel buffer nobody drains. So each link carries
//! a heartbeat of its own:
//!
//! - the sending side (the dialer) writes `PING` every `dead_after / 3`; the receiving side answers each
//!   with `PONG`. Both are lines of their own between records, so a record is never split.
//! - each side counts as *heard* anything the other side did on the link: any line read, and, for the
//!   sender, the kernel taking bytes again after its buffer was full (the neighbour's kernel acknowledged
//!   data, so it is alive but busy: a long anti-entropy sync must not look like silence).
//! - a side that has heard nothing for `dead_after` closes the link: the dialer then redials with its
//!   usual backoff, and the acceptor's half is gone too, so the neighbour counts as down within
//!   `dead_after` (`limits.peer_dead_after_ms`, default 3,000 ms) instead of TCP's 20 s.
//!
//! A healthy idle link costs 5 bytes each way every second, and is never dropped: its `PONG` comes back
//! within a round trip, far inside `dead_after`.

use std::time::{Duration, Instant};

/// The heartbeat line the sending side writes, and the receiving side's answer.
pub const PING: &[u8] = b"PING\n";
pub const PONG: &[u8] = b"PONG\n";

/// What a link should do at a heartbeat check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing was heard for `dead_after`: close the link.
    Dead,
    /// Write a `PING` (only ever returned to a side that pings).
    Ping,
    /// Nothing to do until `next_check`.
    Quiet,
}

#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    dead_after: Duration,
    last_heard: Instant,
    /// When the last `PING` was written; `None` on a side that does not ping.
    last_ping: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat for a link that became live at `now`. `pings` is true on the sending side.
    pub fn new(dead_after: Duration, pings: bool, now: Instant) -> Heartbeat {
        Heartbeat { dead_after, last_heard: now, last_ping: pings.then_some(now) }
    }

    /// How often the sending side pings.
    pub fn interval(&self) -> Duration {
        self.dead_after / 3
    }

    /// The other side showed it is alive at `now`.
    pub fn heard(&mut self, now: Instant) {
        if now > self.last_heard {
            self.last_heard = now;
        }
    }

    /// The check at `now`: dead, time to ping (then call [`pinged`](Self::pinged)), or quiet.
    pub fn check(&self, now: Instant) -> Beat {
        if now.saturating_duration_since(self.last_heard) >= self.dead_after {
            return Beat::Dead;
        }
        match self.last_ping {
            Some(at) if now.saturating_duration_since(at) >= self.interval() => Beat::Ping,
            _ => Beat::Quiet,
        }
    }

    /// A `PING` was written at `now`.
    pub fn pinged(&mut self, now: Instant) {
        if self.last_ping.is_some() {
            self.last_ping = Some(now);
        }
    }

    /// When `check` should run next: the next ping, or the moment silence becomes death, whichever is
    /// first.
    pub fn next_check(&self) -> Instant {
        let dead = self.last_heard + self.dead_after;
        match self.last_ping {
            Some(at) => dead.min(at + self.interval()),
            None => dead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_millis(3000);

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// A healthy link: the sender pings every second, each PONG is heard 1 ms later; over a minute it
    /// is never dead.
    #[test]
    fn a_healthy_idle_link_pings_every_third_and_never_dies() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(DEAD, true, t0);
        let mut pings = Vec::new();
        let mut now = t0;
        while now < ms(t0, 60_000) {
            now = hb.next_check();
            match hb.check(now) {
                Beat::Dead => panic!("a link answering every ping died at {:?}", now - t0),
                Beat::Ping => {
                    hb.pinged(now);
                    pings.push((now - t0).as_millis());
                    hb.heard(now + Duration::from_millis(1));
                }
                Beat::Quiet => {}
            }
        }
        assert_eq!(&pings[..4], [1000, 2000, 3000, 4000]);
        assert_eq!(pings.len(), 60);
    }

    /// A neighbour that goes silent after its last PONG at 10.0 s is dead exactly 3 s later: the checks
    /// in between ping, and the one at 13.0 s finds it dead.
    #[test]
    fn a_silent_neighbour_is_dead_within_dead_after() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(DEAD, true, t0);
        hb.heard(ms(t0, 10_000));
        hb.pinged(ms(t0, 10_000));
        let mut seen = Vec::new();
        loop {
            let at = hb.next_check();
            let beat = hb.check(at);
            seen.push(((at - t0).as_millis(), beat));
            match beat {
                Beat::Dead => break,
                Beat::Ping => hb.pinged(at),
                Beat::Quiet => {}
            }
        }
        assert_eq!(seen, [(11_000, Beat::Ping), (12_000, Beat::Ping), (13_000, Beat::Dead)]);
    }

    #[test]
    fn the_receiving_side_never_pings_and_dies_after_dead_after_of_silence() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(DEAD, false, t0);
        assert_eq!(hb.check(ms(t0, 2999)), Beat::Quiet);
        hb.heard(ms(t0, 2000));
        assert_eq!(hb.next_check(), ms(t0, 5000));
        assert_eq!(hb.check(ms(t0, 4999)), Beat::Quiet);
        assert_eq!(hb.check(ms(t0, 5000)), Beat::Dead);
        // An old event heard late does not move time back.
        hb.heard(ms(t0, 1000));
        assert_eq!(hb.next_check(), ms(t0, 5000));
    }
}
