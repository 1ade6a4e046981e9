//! The link's heartbeat: once a link is Live, the dialer pings and the acceptor answers, and each side
//! drops a link on which nothing has been heard for `limits.peer_dead_after_ms` (the timing rules are in
//! `server/heartbeat.rs`; this file arms the loop's timer for them and acts on their verdicts).

use super::{Peer, PeerClose, Role};
use crate::server::ctx::Ctx;
use crate::server::heartbeat::{self, Beat, Heartbeat};
use crate::server::timer::Timer;
use std::time::{Duration, Instant};

impl Peer {
    /// The link is Live: its heartbeat starts (the dialer pings, the acceptor answers).
    pub(super) fn start_heartbeat(&mut self, ctx: &mut Ctx) {
        let dead_after = Duration::from_millis(ctx.limits.peer_dead_after_ms);
        let pings = matches!(self.role, Role::Dialer(_));
        let hb = Heartbeat::new(dead_after, pings, ctx.now);
        self.arm_beat(hb.next_check(), ctx);
        self.heartbeat = Some(hb);
    }

    fn arm_beat(&mut self, at: Instant, ctx: &mut Ctx) {
        if self.beat_at.is_none_or(|t| at < t) {
            self.beat_at = Some(at);
            ctx.timers.add(at, Timer::Conn(self.token));
        }
    }

    /// A heartbeat check came due: drop a link that has gone silent, ping, and arm the next check.
    pub(super) fn check_heartbeat(&mut self, ctx: &mut Ctx) {
        if !self.is_live() || self.beat_at.is_some_and(|t| t > ctx.now) {
            return; // not live, or a stale entry: the armed check is later
        }
        self.beat_at = None;
        let Some(mut hb) = self.heartbeat else { return };
        match hb.check(ctx.now) {
            Beat::Dead => {
                let ms = ctx.limits.peer_dead_after_ms;
                return self.close(PeerClose::Silent, ctx, format_args!("nothing heard for {ms} ms"));
            }
            Beat::Ping => {
                // Between whole lines and frames; an `OFF` goes with it if the stream moved on.
                self.push_line(heartbeat::PING);
                self.mark_dirty(ctx);
                hb.pinged(ctx.now);
            }
            Beat::Quiet => {}
        }
        self.heartbeat = Some(hb);
        self.arm_beat(hb.next_check(), ctx);
    }

    /// The other side showed it is alive.
    pub(super) fn heard(&mut self, now: Instant) {
        if let Some(hb) = &mut self.heartbeat {
            hb.heard(now);
        }
    }
}
