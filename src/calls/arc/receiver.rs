//! The receive side of one ArcRTC stream (docs/arcrtc.md §5.3): a jitter buffer
//! that plays packets in sequence order after a target delay, the NACKs to send
//! for gaps, and the statistics of each reporting interval. Pure logic: the
//! caller gives the clock and does the sending.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Target delay before any jitter has been measured.
const DEFAULT_DELAY: Duration = Duration::from_millis(20);
/// The target delay follows 3 × the measured jitter, within these bounds (ms).
const LOW_DELAY_MS: f64 = 10.0;
const HIGH_DELAY_MS: f64 = 200.0;
/// Packets held at most, and how far behind the newest a gap is tracked.
const WINDOW: u64 = 1024;
/// A jump further ahead than this is a new start, not a gap.
const MAX_JUMP: u64 = 3000;
/// NACKs per missing packet.
const MAX_NACKS: u8 = 3;

/// A received packet, as played out.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Extended sequence number; its low 16 bits are the wire number.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
}

/// What became of a packet given to [`Receiver::on_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Buffered for playout.
    New,
    /// Buffered, and it filled a gap that had been NACKed.
    Recovered,
    /// Already buffered or played: dropped.
    Duplicate,
    /// Its playout time passed and its gap was given up: dropped.
    TooLate,
}

/// Statistics of one reporting interval ([`Receiver::take_interval`]).
#[derive(Debug, Default, Clone)]
pub struct Interval {
    /// Packets buffered, new or recovered.
    pub received: u64,
    /// Of those, packets that filled a NACKed gap.
    pub recovered: u64,
    /// Packets given up (not there at their playout time, or dropped for room).
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that came after their playout time.
    pub late: u64,
    pub nacks_sent: u64,
    /// RFC 3550 interarrival jitter in ms: a running estimate, not reset.
    pub jitter_ms: f64,
    /// Sender-to-receiver latency of each buffered packet that carried its send time.
    pub latency_ms: Vec<f64>,
    /// The jitter buffer's target delay now.
    pub target_delay_ms: f64,
}

/// A sequence number not received yet.
struct Gap {
    /// When a later packet arrived and showed it missing.
    since: Instant,
    nacks: u8,
    last_nack: Option<Instant>,
}

/// The receive side of one RTP stream: jitter buffer, NACKs, statistics.
pub struct Receiver {
    clock_rate: f64,
    min_delay: Duration,
    target: Duration,
    /// The newest extended sequence number; `None` before the first packet.
    highest: Option<u64>,
    /// Everything before this has been played or given up.
    next_play: u64,
    /// Packets by sequence number, with the instant their delay counts from:
    /// their arrival, or for a packet that filled a gap, when the gap was seen.
    buffer: BTreeMap<u64, (Instant, Packet)>,
    missing: BTreeMap<u64, Gap>,
    /// Recently given-up sequence numbers, to tell a late packet from a duplicate.
    given_up: BTreeSet<u64>,
    /// After a very old packet, the number that would follow it: if that comes
    /// next, the sender restarted.
    restart_probe: Option<u16>,
    /// Arrival and RTP timestamp of the last new packet, for the jitter.
    last: Option<(Instant, u32)>,
    /// Interarrival jitter in RTP clock units.
    jitter: f64,
    stats: Interval,
}

impl Receiver {
    /// A receiver for a stream of this RTP clock rate, whose target delay never
    /// goes below `min_delay`.
    pub fn new(clock_rate: u32, min_delay: Duration) -> Receiver {
        Receiver {
            clock_rate: f64::from(clock_rate.max(1)),
            min_delay,
            target: DEFAULT_DELAY.max(min_delay),
            highest: None,
            next_play: 0,
            buffer: BTreeMap::new(),
            missing: BTreeMap::new(),
            given_up: BTreeSet::new(),
            restart_probe: None,
            last: None,
            jitter: 0.0,
            stats: Interval::default(),
        }
    }

    /// A packet from the wire. `seq16` is the RTP header's sequence number;
    /// `send_time_us` the sender's wall clock (µs since the Unix epoch) from the
    /// send-time extension, if any; `now_us` ours, for the latency.
    #[allow(clippy::too_many_arguments)]
    pub fn on_packet(
        &mut self,
        seq16: u16,
        timestamp: u32,
        marker: bool,
        payload: Arc<[u8]>,
        arrival: Instant,
        send_time_us: Option<u64>,
        now_us: u64,
    ) -> Arrival {
        let seq = match self.highest {
            None => {
                // Start one cycle up, so an early reordered packet stays above zero.
                let seq = u64::from(seq16) + (1 << 16);
                self.next_play = seq;
                self.restart(seq);
                seq
            }
            Some(highest) => {
                let delta = seq16.wrapping_sub(highest as u16);
                let seq = highest.wrapping_add_signed(i64::from(delta as i16));
                if seq > highest + MAX_JUMP {
                    self.restart(seq);
                    seq
                } else if seq + WINDOW < highest {
                    if self.restart_probe != Some(seq16) {
                        self.restart_probe = Some(seq16.wrapping_add(1));
                        self.stats.late += 1;
                        return Arrival::TooLate;
                    }
                    // Two in a row far behind: a new start, numbered ahead.
                    let seq = highest + u64::from(delta);
                    self.restart(seq);
                    seq
                } else {
                    seq
                }
            }
        };
        if self.given_up.contains(&seq) {
            self.stats.late += 1;
            return Arrival::TooLate;
        }
        if seq < self.next_play || self.buffer.contains_key(&seq) {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        let (from, kind) = match self.missing.remove(&seq) {
            Some(gap) if gap.nacks > 0 => (gap.since, Arrival::Recovered),
            Some(gap) => (gap.since, Arrival::New),
            None => (arrival, Arrival::New),
        };
        let highest = self.highest.unwrap_or(seq);
        if seq > highest {
            self.open_gaps(highest, seq, arrival);
        }
        // Not for retransmissions: their delay includes the NACK's round trip.
        if kind == Arrival::New {
            self.measure_jitter(arrival, timestamp);
        }
        self.stats.received += 1;
        if kind == Arrival::Recovered {
            self.stats.recovered += 1;
        }
        if let Some(sent) = send_time_us {
            self.stats
                .latency_ms
                .push((now_us as f64 - sent as f64) / 1000.0);
        }
        let packet = Packet {
            seq,
            timestamp,
            marker,
            payload,
            arrival,
        };
        self.buffer.insert(seq, (from, packet));
        if self.buffer.len() > WINDOW as usize
            && let Some((old, _)) = self.buffer.pop_first()
        {
            self.stats.lost += 1;
            self.given_up.insert(old);
        }
        kind
    }

    /// Sequence numbers (wire form) to NACK now: gaps not asked for yet, and
    /// gaps last asked for at least `rtt` ago, at most three times each. A gap
    /// whose playout time has come is not asked for again.
    pub fn nacks_due(&mut self, now: Instant, rtt: Duration) -> Vec<u16> {
        let mut due = Vec::new();
        for (seq, gap) in &mut self.missing {
            if gap.since + self.target <= now {
                gap.nacks = MAX_NACKS;
                continue;
            }
            let ready = match gap.last_nack {
                None => true,
                Some(at) => gap.nacks < MAX_NACKS && at + rtt <= now,
            };
            if ready {
                gap.nacks += 1;
                gap.last_nack = Some(now);
                due.push(*seq as u16);
            }
        }
        self.stats.nacks_sent += due.len() as u64;
        due
    }

    /// The packets whose playout time has come, in sequence order; gaps before
    /// them whose time came are given up as lost. Playout time is the target
    /// delay after arrival, or for a packet that filled a gap, after the gap
    /// was seen (so a retransmission does not hold up the packets behind it).
    pub fn pop_ready(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some((seq, due)) = self.head() {
            if due > now {
                break;
            }
            if let Some((_, packet)) = self.buffer.remove(&seq) {
                out.push(packet);
            } else {
                self.missing.remove(&seq);
                self.given_up.insert(seq);
                self.stats.lost += 1;
            }
            self.next_play = seq + 1;
        }
        out
    }

    /// When [`pop_ready`](Self::pop_ready) or [`nacks_due`](Self::nacks_due)
    /// (with the same `rtt`) next has something to do, if anything.
    pub fn next_wake(&self, rtt: Duration) -> Option<Instant> {
        let play = self.head().map(|(_, at)| at);
        let nack = self.missing.values().filter_map(|gap| {
            let at = match gap.last_nack {
                None => gap.since,
                Some(_) if gap.nacks >= MAX_NACKS => return None,
                Some(last) => last + rtt,
            };
            (at < gap.since + self.target).then_some(at)
        });
        play.into_iter().chain(nack).min()
    }

    /// The statistics since the last call.
    pub fn take_interval(&mut self) -> Interval {
        Interval {
            jitter_ms: self.jitter_ms(),
            target_delay_ms: self.target.as_secs_f64() * 1000.0,
            ..std::mem::take(&mut self.stats)
        }
    }

    /// Forget the gaps of the old numbering (not counted lost) and carry on
    /// from `seq`; packets already buffered still play.
    fn restart(&mut self, seq: u64) {
        self.highest = Some(seq);
        self.missing.clear();
        self.given_up.clear();
        self.restart_probe = None;
        self.last = None;
    }

    /// `seq` arrived past the newest (`highest`): what lies between is missing,
    /// as far as the window reaches; older gaps are given up.
    fn open_gaps(&mut self, highest: u64, seq: u64, now: Instant) {
        let floor = seq.saturating_sub(WINDOW);
        let from = (highest + 1).max(floor);
        self.stats.lost += from - (highest + 1);
        for s in from..seq {
            let gap = Gap {
                since: now,
                nacks: 0,
                last_nack: None,
            };
            self.missing.insert(s, gap);
        }
        let kept = self.missing.split_off(&floor);
        self.stats.lost += std::mem::replace(&mut self.missing, kept).len() as u64;
        self.given_up = self.given_up.split_off(&floor);
        self.highest = Some(seq);
    }

    /// RFC 3550 §6.4.1, and the target delay that follows from it.
    fn measure_jitter(&mut self, arrival: Instant, timestamp: u32) {
        if let Some((at, ts)) = self.last {
            let elapsed = if arrival >= at {
                (arrival - at).as_secs_f64()
            } else {
                -(at - arrival).as_secs_f64()
            };
            let d = elapsed * self.clock_rate - f64::from(timestamp.wrapping_sub(ts) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
            let target_ms = (3.0 * self.jitter_ms()).clamp(LOW_DELAY_MS, HIGH_DELAY_MS);
            self.target = Duration::from_secs_f64(target_ms / 1000.0).max(self.min_delay);
        }
        self.last = Some((arrival, timestamp));
    }

    fn jitter_ms(&self) -> f64 {
        self.jitter / self.clock_rate * 1000.0
    }

    /// The next sequence number to play or give up, and when.
    fn head(&self) -> Option<(u64, Instant)> {
        let packet = self
            .buffer
            .first_key_value()
            .map(|(s, (from, _))| (*s, *from));
        let gap = self
            .missing
            .first_key_value()
            .map(|(s, gap)| (*s, gap.since));
        let (seq, from) = packet.into_iter().chain(gap).min_by_key(|(s, _)| *s)?;
        Some((seq, from + self.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Packet `seq` arriving `at` ms after `t0`, with a 48 kHz timestamp of `ts_ms`.
    fn put(rx: &mut Receiver, t0: Instant, seq: u16, ts_ms: u32, at: u64) -> Arrival {
        let payload: Arc<[u8]> = Arc::from(vec![seq as u8]);
        rx.on_packet(seq, ts_ms * 48, false, payload, t0 + ms(at), None, 0)
    }

    fn wire(packets: &[Packet]) -> Vec<u16> {
        packets.iter().map(|p| p.seq as u16).collect()
    }

    #[test]
    fn packets_play_in_order_after_the_target_delay() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        for seq in 0..5u16 {
            let at = u64::from(seq) * 20;
            assert_eq!(put(&mut rx, t0, seq, at as u32, at), Arrival::New);
        }
        assert!(rx.pop_ready(t0 + ms(19)).is_empty());
        assert_eq!(rx.next_wake(ms(50)), Some(t0 + ms(20)));
        assert_eq!(wire(&rx.pop_ready(t0 + ms(20))), [0]);
        assert_eq!(wire(&rx.pop_ready(t0 + ms(100))), [1, 2, 3, 4]);
        assert_eq!(rx.next_wake(ms(50)), None);
        let stats = rx.take_interval();
        assert_eq!((stats.received, stats.lost, stats.nacks_sent), (5, 0, 0));
        assert_eq!(stats.target_delay_ms, 20.0);
    }

    #[test]
    fn a_gap_is_nacked_at_once_then_after_each_rtt_three_times_and_recovered() {
        let t0 = Instant::now();
        let rtt = ms(30);
        let mut rx = Receiver::new(48_000, ms(200));
        put(&mut rx, t0, 10, 0, 0);
        assert!(rx.nacks_due(t0, rtt).is_empty());
        put(&mut rx, t0, 12, 40, 40);
        assert_eq!(rx.next_wake(rtt), Some(t0 + ms(40)));
        assert_eq!(rx.nacks_due(t0 + ms(40), rtt), [11]);
        assert!(rx.nacks_due(t0 + ms(41), rtt).is_empty());
        assert_eq!(rx.next_wake(rtt), Some(t0 + ms(70)));
        assert!(rx.nacks_due(t0 + ms(69), rtt).is_empty());
        assert_eq!(rx.nacks_due(t0 + ms(70), rtt), [11]);
        assert_eq!(rx.nacks_due(t0 + ms(100), rtt), [11]);
        assert!(rx.nacks_due(t0 + ms(130), rtt).is_empty());
        assert!(rx.nacks_due(t0 + ms(200), rtt).is_empty());
        put(&mut rx, t0, 13, 60, 60);
        assert_eq!(put(&mut rx, t0, 11, 20, 210), Arrival::Recovered);
        // The recovered packet keeps its gap's time: it does not hold up 12.
        assert_eq!(wire(&rx.pop_ready(t0 + ms(240))), [10, 11, 12]);
        assert_eq!(wire(&rx.pop_ready(t0 + ms(300))), [13]);
        let stats = rx.take_interval();
        assert_eq!(stats.nacks_sent, 3);
        assert_eq!((stats.received, stats.recovered, stats.lost), (4, 1, 0));
        assert_eq!(rx.take_interval().nacks_sent, 0);
    }

    #[test]
    fn an_unfilled_gap_is_given_up_and_later_packets_still_play() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        put(&mut rx, t0, 1, 20, 20);
        put(&mut rx, t0, 3, 60, 60);
        put(&mut rx, t0, 4, 80, 80);
        assert_eq!(wire(&rx.pop_ready(t0 + ms(40))), [1]);
        assert!(rx.pop_ready(t0 + ms(79)).is_empty());
        assert_eq!(wire(&rx.pop_ready(t0 + ms(80))), [3]);
        assert!(rx.nacks_due(t0 + ms(80), ms(10)).is_empty());
        assert_eq!(put(&mut rx, t0, 2, 40, 85), Arrival::TooLate);
        assert_eq!(wire(&rx.pop_ready(t0 + ms(100))), [4]);
        let stats = rx.take_interval();
        assert_eq!((stats.received, stats.lost, stats.late), (3, 1, 1));
    }

    #[test]
    fn duplicates_are_dropped_before_and_after_playout() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        assert_eq!(put(&mut rx, t0, 7, 0, 0), Arrival::New);
        assert_eq!(put(&mut rx, t0, 7, 0, 5), Arrival::Duplicate);
        assert_eq!(rx.pop_ready(t0 + ms(30)).len(), 1);
        assert_eq!(put(&mut rx, t0, 7, 0, 40), Arrival::Duplicate);
        assert!(rx.pop_ready(t0 + ms(100)).is_empty());
        let stats = rx.take_interval();
        assert_eq!((stats.received, stats.duplicates), (1, 2));
    }

    #[test]
    fn sequence_numbers_wrap_around_in_order() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        put(&mut rx, t0, 65534, 0, 0);
        put(&mut rx, t0, 0, 40, 1);
        assert_eq!(put(&mut rx, t0, 65535, 20, 2), Arrival::New);
        put(&mut rx, t0, 1, 60, 3);
        let out = rx.pop_ready(t0 + ms(100));
        assert_eq!(wire(&out), [65534, 65535, 0, 1]);
        assert!(out.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(rx.take_interval().lost, 0);
    }

    #[test]
    fn a_packet_far_behind_is_dropped_and_a_jump_far_ahead_starts_over() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        put(&mut rx, t0, 5000, 0, 0);
        assert_eq!(put(&mut rx, t0, 2000, 0, 1), Arrival::TooLate);
        assert_eq!(put(&mut rx, t0, 9000, 20, 2), Arrival::New);
        assert!(rx.nacks_due(t0 + ms(2), ms(10)).is_empty());
        assert_eq!(wire(&rx.pop_ready(t0 + ms(50))), [5000, 9000]);
        // A gap wider than the window is tracked only for its last 1024.
        put(&mut rx, t0, 11_000, 40, 3);
        assert_eq!(rx.nacks_due(t0 + ms(3), ms(10)).len(), 1024);
        assert_eq!(rx.take_interval().lost, 2000 - 1 - 1024);
    }

    #[test]
    fn jitter_is_zero_for_regular_arrivals_and_grows_with_irregular_ones() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(5));
        for n in 0..50u16 {
            let at = u64::from(n) * 20;
            put(&mut rx, t0, n, at as u32, at);
        }
        let regular = rx.take_interval();
        assert!(regular.jitter_ms.abs() < 1e-6, "{}", regular.jitter_ms);
        assert_eq!(regular.target_delay_ms, 10.0);
        for n in 50..100u16 {
            let at = u64::from(n) * 20 + if n % 2 == 0 { 10 } else { 0 };
            put(&mut rx, t0, n, u32::from(n) * 20, at);
        }
        let irregular = rx.take_interval();
        assert!(irregular.jitter_ms > 5.0, "{}", irregular.jitter_ms);
        assert!(irregular.target_delay_ms > 15.0);
        assert!(irregular.target_delay_ms <= 200.0);
    }

    #[test]
    fn latency_is_recorded_from_the_send_time() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(90_000, ms(20));
        let data: Arc<[u8]> = Arc::from(&b"frame"[..]);
        let sent = Some(1_000_000);
        rx.on_packet(1, 0, true, data.clone(), t0, sent, 1_045_000);
        rx.on_packet(2, 0, true, data.clone(), t0, None, 1_046_000);
        rx.on_packet(1, 0, true, data, t0, sent, 1_050_000);
        assert_eq!(rx.take_interval().latency_ms, [45.0]);
        assert!(rx.take_interval().latency_ms.is_empty());
    }

    #[test]
    fn the_buffer_holds_at_most_1024_packets() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(48_000, ms(20));
        for n in 0..1100u16 {
            put(&mut rx, t0, n, 0, 0);
        }
        assert_eq!(rx.pop_ready(t0 + ms(20)).len(), 1024);
        assert_eq!(put(&mut rx, t0, 3, 0, 20), Arrival::TooLate);
        assert_eq!(rx.take_interval().lost, 1100 - 1024);
    }
}
