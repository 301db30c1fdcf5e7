//! The heartbeat decoder and one host's membership and convergence machine,
//! fed a random sequence of frames, time steps, admin verbs and dataplane
//! reports.
//!
//! # Input
//!
//! Up to 48 records `op arg len payload[len]` (a truncated last record is
//! dropped):
//!
//! | `op % 6` | record |
//! |---|---|
//! | 0 | `payload` is a frame for `handle_heartbeat`, as is (forged, replayed, malformed, or one of the seeds' valid heartbeats) |
//! | 1 | an *authentic* heartbeat of peer `2 + arg % 3`, built from the machine's own last heartbeat with fields taken from `payload` (state, phase, views, digests, bound, weights, flags, sequence, boot), encoded with the cluster key |
//! | 2 | time passes: `(arg + 1) × period / 16`, then `handle_timeout` |
//! | 3 | admin verb `arg % 10` (query, start, stop, suspend, resume, drainstop, drain / enable / disable port 80 or all, display) |
//! | 4 | `handle_load(arg % rules, payload as a count)` |
//! | 5 | `handle_dirty` for the current map epoch, groups from `payload` |
//!
//! After every record the machine's events and heartbeats are drained.
//! Seeds (`cargo run -p shoal-controlplane --example heartbeat_seeds`) are
//! valid heartbeats of a live three-host cluster with the same key, spec,
//! period and boot ids as here.
//!
//! # Checks
//!
//! Besides never panicking: [`claim`] reads the decoded host, boot and
//! sequence of every frame that authenticates (and the host of every
//! authentic peer frame);
//! every heartbeat the machine sends decodes under
//! the cluster key to the sender's own ID with a growing sequence number,
//! fits [`MAX_FRAME`]; map epochs of `EffectiveViewChanged` strictly grow;
//! a stopped or suspended host's effective view takes nothing new under any
//! rule; and `poll_timeout` never lies in the past after the machine has
//! been run and drained.
#![no_main]

use shoal_controlplane::admin::Scope;
use shoal_controlplane::heartbeat::{claim, ClusterAuth, DirtyPage, Heartbeat, MAX_FRAME};
use shoal_controlplane::{Event, HostState, Machine, Phase, Request};
use shoal_dataplane::bucket::GROUPS;
use shoal_dataplane::map::GroupBits;
use shoal_dataplane::{HostId, HostSet, MAX_RULES};
use shoal_testkit::heartbeat::{boot, config, spec, KEY, PERIOD, START};

/// Records read per input: enough to converge and then disturb it; more
/// only slows every execution (each record runs the whole machine).
const MAX_RECORDS: usize = 48;

/// Host `n` (always 1..=4 here).
fn host(n: u8) -> HostId {
    HostId::new(n).expect("host IDs here are 1..=4")
}

fn u64_at(p: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = p.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

struct Run {
    m: Machine,
    auth: ClusterAuth,
    now: u64,
    epoch: u64,
    seq_out: u64,
    last_tx: Option<Heartbeat>,
    peer_seq: [u64; 3],
    buf: Vec<u8>,
}

impl Run {
    fn new() -> Self {
        let c = config(1).expect("host 1");
        let m = Machine::new(c, spec(), START);
        let epoch = m.effective_view().1;
        Self {
            m,
            auth: ClusterAuth::new(KEY, &spec()),
            now: START,
            epoch,
            seq_out: 0,
            last_tx: None,
            peer_seq: [0; 3],
            buf: vec![0u8; MAX_FRAME],
        }
    }

    /// Events and heartbeats, with the checks of the module docs.
    fn drain(&mut self) {
        for _ in 0..64 {
            let mut progressed = false;
            while let Some(ev) = self.m.poll_event() {
                progressed = true;
                if let Event::EffectiveViewChanged { epoch, .. } = ev {
                    assert!(epoch > self.epoch, "map epoch {epoch} after {}", self.epoch);
                    self.epoch = epoch;
                }
            }
            if matches!(self.m.state(), HostState::Stopped | HostState::Suspended) {
                let (view, _) = self.m.effective_view();
                for r in 0..spec().rules.len() {
                    let takes = view.members.contains(host(1))
                        && !view.disabled.get(r).is_some_and(|d| d.contains(host(1)))
                        && view.weights.get(r).is_some_and(|w| w[0] > 0);
                    assert!(!takes, "a {:?} host takes rule {r}", self.m.state());
                }
            }
            while let Some(n) = self.m.poll_transmit(self.now, &mut self.buf) {
                progressed = true;
                assert!(n <= MAX_FRAME);
                let hb = Heartbeat::decode(&self.buf[..n], &self.auth)
                    .expect("the machine's own heartbeat decodes");
                assert_eq!(hb.host, host(1));
                assert!(hb.seq > self.seq_out, "sequence must grow");
                self.seq_out = hb.seq;
                self.last_tx = Some(hb);
            }
            if !progressed {
                break;
            }
        }
        // Nothing was due at `now` any more: the next deadline is later
        // (an engine sleeping until it would otherwise spin).
        assert!(
            self.m.poll_timeout() > self.now,
            "poll_timeout {} not after now {}",
            self.m.poll_timeout(),
            self.now
        );
    }

    /// An authentic heartbeat of a peer, from the machine's own last one.
    fn peer_heartbeat(&mut self, arg: u8, p: &[u8]) -> Option<Vec<u8>> {
        let mine = self.last_tx.clone()?;
        let i = (arg % 3) as usize;
        let b = |k: usize| p.get(k).copied().unwrap_or(0);
        let pick = |sel: u8, own: u64, k: usize| match sel % 4 {
            0 => own,
            1 => 0,
            2 => mine.proposal_digest,
            _ => u64_at(p, k),
        };
        let set = |x: u8| HostSet::from_bits(u64::from(x & 0x0f));
        let mut hb = mine.clone();
        hb.host = host(2 + i as u8);
        hb.state = match b(0) % 5 {
            0 => HostState::Converging,
            1 => HostState::Converged,
            2 => HostState::Draining,
            3 => HostState::Stopped,
            _ => HostState::Suspended,
        };
        hb.phase = match b(1) % 4 {
            0 => Phase::Idle,
            1 => Phase::Stable,
            2 => Phase::Agreeing,
            _ => Phase::Releasing,
        };
        // A restart (newer boot) or a duplicate (another boot) now and then.
        hb.boot = boot(hb.host) + u64::from(b(2) % 4) * 1_000_000_000;
        self.peer_seq[i] += 1 + u64::from(b(3) % 3);
        hb.seq = if b(3) & 0x80 != 0 {
            u64_at(p, 4) % 1_000_000
        } else {
            self.peer_seq[i]
        };
        if b(12) & 1 != 0 {
            hb.hears = set(b(13));
            hb.proposed = set(b(14));
            hb.adopted = set(b(15));
        }
        hb.proposal_digest = pick(b(16), mine.proposal_digest, 20);
        hb.bound = pick(b(17), mine.bound, 28);
        hb.adopted_digest = pick(b(18), mine.adopted_digest, 36);
        hb.adopted_epoch = mine.adopted_epoch + u64::from(b(19) % 3);
        if b(44) & 1 != 0 {
            hb.fingerprint = u64_at(p, 44);
        }
        let mut weights = [0u8; MAX_RULES];
        for (r, w) in weights.iter_mut().enumerate().take(2) {
            *w = b(52 + r);
        }
        hb.weights = weights;
        hb.disabled = u32::from(b(54) & 3);
        hb.draining = u32::from(b(55) & 3);
        hb.dirty = DirtyPage {
            pages: 1,
            ..DirtyPage::default()
        };
        let mut out = vec![0u8; MAX_FRAME];
        let n = hb.encode(&self.auth, &mut out).ok()?;
        out.truncate(n);
        Some(out)
    }

    fn admin(&mut self, arg: u8) {
        let port80 = Scope::Rule {
            vip: None,
            port: Some(80),
        };
        let req = match arg % 10 {
            0 => Request::Query,
            1 => Request::Start,
            2 => Request::Stop,
            3 => Request::Suspend,
            4 => Request::Resume,
            5 => Request::Drainstop,
            6 => Request::Drain { scope: port80 },
            7 => Request::Enable { scope: Scope::All },
            8 => Request::Disable { scope: port80 },
            _ => Request::Display,
        };
        let _ = self.m.handle_admin(&req, self.now);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut run = Run::new();
    run.drain();
    let mut rest = data;
    let mut records = 0;
    while rest.len() >= 3 && records < MAX_RECORDS {
        let (op, arg, len) = (rest[0], rest[1], rest[2] as usize);
        let Some(payload) = rest.get(3..3 + len) else {
            break;
        };
        rest = &rest[3 + len..];
        records += 1;
        match op % 6 {
            0 => {
                // The key-less peek agrees with the decoder on every frame
                // that authenticates.
                let claimed = claim(payload).map(|c| (c.host, c.boot, c.seq));
                if let Ok(hb) = Heartbeat::decode(payload, &run.auth) {
                    assert_eq!(claimed, Some((hb.host, hb.boot, hb.seq)), "peek and decode disagree");
                }
                let _ = run.m.handle_heartbeat(payload, run.now);
            }
            1 => {
                if let Some(frame) = run.peer_heartbeat(arg, payload) {
                    assert_eq!(claim(&frame).map(|c| c.host), Some(host(2 + arg % 3)));
                    let _ = run.m.handle_heartbeat(&frame, run.now);
                }
            }
            2 => {
                run.now += (u64::from(arg) + 1) * PERIOD / 16;
                run.m.handle_timeout(run.now);
            }
            3 => run.admin(arg),
            4 => {
                let rule = usize::from(arg) % spec().rules.len();
                run.m.handle_load(rule, u64_at(payload, 0) % 1000, run.now);
            }
            _ => {
                let mut dirty = vec![GroupBits::default(); spec().rules.len()];
                let rule = usize::from(arg) % dirty.len();
                for pair in payload.chunks(2) {
                    let g = u32::from(u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
                    dirty[rule].insert(g % GROUPS as u32);
                }
                run.m.handle_dirty(run.epoch, &dirty, run.now);
            }
        }
        run.drain();
    }
});
