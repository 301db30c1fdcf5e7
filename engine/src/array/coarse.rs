//! A proxy worker's coarse timer: the deadlines every request arms (the
//! first byte of the upstream's answer, the HTTP library's bound on reading
//! a request head) kept at a granularity of [`GRAIN`] in a per-thread
//! table, with one clock read (the vDSO's, no system call), no lock and no
//! allocation per deadline.
//!
//! The runtime's own timer takes its driver's lock to arm and again to
//! disarm a deadline; at tens of thousands of requests a second that was a
//! few percent of a request's CPU. Here a worker's [`drive`] task reads the
//! clock once per grain while deadlines are armed (and sleeps while none
//! is), and fires those that are due. Arming reads the clock itself: the
//! driver's last reading lags by as long as the system did not run the
//! worker (a loaded host, a paused VM), and a deadline armed from it would
//! fire early by that much.
//!
//! Guarantees:
//! - a deadline fires never before it is due, and at most two grains
//!   (plus the worker's scheduling delay) after;
//! - arming, re-arming and disarming cost a table lookup (`O(log n)` in
//!   the number of distinct due grains, a handful under load) and reuse
//!   freed slots;
//! - deadlines fire only on a thread whose runtime runs [`drive`]: every
//!   proxy worker does (`run_pinned`). A [`Sleep`] polled or dropped on
//!   another thread than the one that armed it resolves at once and never
//!   touches that thread's table (its slot there stays taken).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// The timer's granularity, in milliseconds.
const GRAIN_MS: u64 = 10;
/// The timer's granularity.
pub(super) const GRAIN: Duration = Duration::from_millis(GRAIN_MS);

/// Ids of threads' tables (so a [`Sleep`] can tell its own).
static NEXT_WHEEL: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static WHEEL: Wheel = const { Wheel::new() };
}

/// One armed or fired deadline's place in the table.
struct Slot {
    /// Bumped each time the slot is freed, so a stale key finds nothing.
    generation: u32,
    /// The grain it is due at.
    due: u64,
    /// Its index in `Wheel::due[due]` while armed.
    pos: u32,
    state: State,
    waker: Option<Waker>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    Armed,
    Fired,
}

/// A thread's table of deadlines.
struct Wheel {
    /// This table's id; 0 until first used.
    id: Cell<u32>,
    /// The clock's reading the grains count from; `None` until first used.
    origin: Cell<Option<Instant>>,
    /// Whole grains since `origin` at the driver's last reading.
    now: Cell<u64>,
    /// Whether the driver is asleep (nothing armed): the next deadline
    /// armed wakes it.
    parked: Cell<bool>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Armed slots by the grain they are due at.
    due: RefCell<BTreeMap<u64, Vec<u32>>>,
    /// The driver's waker while it is parked.
    driver: RefCell<Option<Waker>>,
}

impl Wheel {
    const fn new() -> Self {
        Self {
            id: Cell::new(0),
            origin: Cell::new(None),
            now: Cell::new(0),
            parked: Cell::new(true),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            due: RefCell::new(BTreeMap::new()),
            driver: RefCell::new(None),
        }
    }

    fn id(&self) -> u32 {
        if self.id.get() == 0 {
            self.id.set(NEXT_WHEEL.fetch_add(1, Ordering::Relaxed));
        }
        self.id.get()
    }

    fn origin(&self) -> Instant {
        match self.origin.get() {
            Some(o) => o,
            None => {
                let o = Instant::now();
                self.origin.set(Some(o));
                o
            }
        }
    }

    /// Reads the clock into `now`.
    fn refresh(&self) {
        let origin = self.origin();
        let elapsed = Instant::now().saturating_duration_since(origin);
        self.now.set(grains_floor(elapsed));
    }

    /// The current grain, from a fresh reading. The driver's last reading
    /// is not enough: the system may not have run this thread since (a
    /// loaded host, a paused VM), and a deadline armed from it would fire
    /// early by as long as the thread was held off.
    fn current(&self) -> u64 {
        self.refresh();
        self.now.get()
    }

    /// The grain a deadline `at` fires at: one past the grain it falls in,
    /// so that it never fires early even when `at` was computed from the
    /// coarse clock (which lags the real one by less than a grain).
    fn due_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin());
        grains_ceil(since).saturating_add(1)
    }

    fn arm(&self, due: u64) -> Key {
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot {
                    generation: 0,
                    due: 0,
                    pos: 0,
                    state: State::Free,
                    waker: None,
                });
                u32::try_from(slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let generation = {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[index as usize];
            slot.state = State::Armed;
            slot.generation
        };
        self.insert(index, due);
        Key {
            wheel: self.id(),
            index,
            generation,
        }
    }

    /// Puts slot `index` in the list of grain `due`.
    fn insert(&self, index: u32, due: u64) {
        let mut table = self.due.borrow_mut();
        let was_empty = table.is_empty();
        let list = table.entry(due).or_default();
        let pos = u32::try_from(list.len()).unwrap_or(u32::MAX);
        list.push(index);
        drop(table);
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[index as usize];
        slot.due = due;
        slot.pos = pos;
        if was_empty && self.parked.get() {
            if let Some(w) = self.driver.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Takes armed slot `index` out of its grain's list.
    fn unlink(&self, index: u32) {
        let (due, pos) = {
            let slots = self.slots.borrow();
            let s = &slots[index as usize];
            (s.due, s.pos as usize)
        };
        let mut table = self.due.borrow_mut();
        let Some(list) = table.get_mut(&due) else {
            return;
        };
        if pos < list.len() && list[pos] == index {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                self.slots.borrow_mut()[moved as usize].pos = pos as u32;
            }
            if list.is_empty() {
                table.remove(&due);
            }
        }
    }

    /// The slot `key` names, if it is still that key's.
    fn state(&self, key: &Key) -> Option<State> {
        if key.wheel != self.id.get() {
            return None;
        }
        let slots = self.slots.borrow();
        let s = slots.get(key.index as usize)?;
        (s.generation == key.generation).then_some(s.state)
    }

    fn poll(&self, key: &Key, cx: &mut Context<'_>) -> Poll<()> {
        match self.state(key) {
            Some(State::Armed) => {
                let mut slots = self.slots.borrow_mut();
                let waker = &mut slots[key.index as usize].waker;
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    fn reset(&self, key: &Key, due: u64) {
        match self.state(key) {
            Some(State::Armed) => {
                self.unlink(key.index);
                self.insert(key.index, due);
            }
            Some(State::Fired) => {
                self.slots.borrow_mut()[key.index as usize].state = State::Armed;
                self.insert(key.index, due);
            }
            Some(State::Free) | None => {}
        }
    }

    fn disarm(&self, key: &Key) {
        let Some(state) = self.state(key) else {
            return;
        };
        if state == State::Armed {
            self.unlink(key.index);
        }
        if state != State::Free {
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[key.index as usize];
            slot.state = State::Free;
            slot.generation = slot.generation.wrapping_add(1);
            slot.waker = None;
            drop(slots);
            self.free.borrow_mut().push(key.index);
        }
    }

    /// Fires every slot due at or before `now`; their wakers go to `wake`.
    fn fire(&self, wake: &mut Vec<Waker>) {
        let now = self.now.get();
        loop {
            let mut table = self.due.borrow_mut();
            let Some(entry) = table.first_entry() else {
                break;
            };
            if *entry.key() > now {
                break;
            }
            let list = entry.remove();
            drop(table);
            let mut slots = self.slots.borrow_mut();
            for index in list {
                let slot = &mut slots[index as usize];
                slot.state = State::Fired;
                wake.extend(slot.waker.take());
            }
        }
    }

    #[cfg(test)]
    fn armed(&self) -> usize {
        self.due.borrow().values().map(Vec::len).sum()
    }
}

fn grains_floor(d: Duration) -> u64 {
    (d.as_nanos() / GRAIN.as_nanos()) as u64
}

fn grains_ceil(d: Duration) -> u64 {
    d.as_nanos().div_ceil(GRAIN.as_nanos()) as u64
}

/// Which slot of which thread's table a [`Sleep`] holds.
#[derive(Debug)]
struct Key {
    wheel: u32,
    index: u32,
    generation: u32,
}

/// A deadline on this thread's table; resolves once it is due. Dropping
/// it disarms it.
#[derive(Debug)]
pub(super) struct Sleep {
    key: Key,
}

impl Sleep {
    /// Due `d` from now (the coarse now).
    pub(super) fn after(d: Duration) -> Self {
        WHEEL.with(|w| {
            let due = w.current().saturating_add(grains_ceil(d)).saturating_add(1);
            Sleep { key: w.arm(due) }
        })
    }

    /// Due at `at`.
    pub(super) fn until(at: Instant) -> Self {
        WHEEL.with(|w| Sleep {
            key: w.arm(w.due_at(at)),
        })
    }

    /// Due at `at` instead (armed again if it had fired).
    pub(super) fn reset(&mut self, at: Instant) {
        WHEEL.with(|w| w.reset(&self.key, w.due_at(at)));
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        WHEEL.with(|w| w.poll(&self.key, cx))
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // During thread teardown the table may be gone already: nothing
        // left to disarm then.
        let _ = WHEEL.try_with(|w| w.disarm(&self.key));
    }
}

impl hyper::rt::Sleep for Sleep {}

/// The coarse clock: the instant of the current grain (never ahead of
/// the real clock, less than a grain behind).
pub(super) fn now() -> Instant {
    WHEEL.with(|w| {
        let grains = w.current();
        w.origin() + Duration::from_millis(grains.saturating_mul(GRAIN_MS))
    })
}

/// `fut`, or [`Elapsed`] if it is not done within `d` of the first time it
/// waits. The deadline is armed then: a future ready at once (most socket
/// writes) costs no clock reading and no deadline.
pub(super) async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut sleep = None;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let sleep = sleep.get_or_insert_with(|| Sleep::after(d));
        match Pin::new(sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elapsed;

/// The HTTP library's timer on this thread's table (its header-read
/// bound).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timer;

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::after(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(Instant::from_std(deadline)))
    }

    fn now(&self) -> std::time::Instant {
        now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(mut s) => s.reset(Instant::from_std(new_deadline)),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// Keeps this thread's table's clock current and fires what is due: one
/// clock reading and one runtime timer per grain while anything is armed,
/// asleep while nothing is. Runs for the worker's life.
pub(super) async fn drive() {
    let mut wake = Vec::new();
    loop {
        let empty = WHEEL.with(|w| w.due.borrow().is_empty());
        if empty {
            std::future::poll_fn(|cx| {
                WHEEL.with(|w| {
                    if w.due.borrow().is_empty() {
                        w.parked.set(true);
                        *w.driver.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
            })
            .await;
            WHEEL.with(|w| {
                w.refresh();
                w.parked.set(false);
            });
        }
        tokio::time::sleep(GRAIN).await;
        WHEEL.with(|w| {
            w.refresh();
            w.fire(&mut wake);
        });
        for waker in wake.drain(..) {
            waker.wake();
        }
    }
}

/// How many deadlines this thread's table holds armed (tests).
#[cfg(test)]
fn armed() -> usize {
    WHEEL.with(Wheel::armed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;
    use std::rc::Rc;

    /// Runs `f` on a paused-clock runtime whose thread runs the driver.
    fn paused<F: Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            tokio::task::spawn_local(drive());
            f.await;
        });
    }

    /// When a sleep of `d` armed now resolves, in virtual time.
    async fn fires_after(d: Duration) -> Duration {
        let start = Instant::now();
        Sleep::after(d).await;
        Instant::now() - start
    }

    #[test]
    fn never_early_and_at_most_two_grains_late() {
        paused(async {
            for ms in [0u64, 1, 9, 10, 11, 95, 300, 5_000] {
                let d = Duration::from_millis(ms);
                let took = fires_after(d).await;
                assert!(took >= d, "{ms} ms fired after {took:?}");
                assert!(took <= d + 2 * GRAIN, "{ms} ms fired after {took:?}");
            }
            assert_eq!(armed(), 0);
        });
    }

    #[test]
    fn after_a_long_quiet_stretch_the_clock_is_read_again() {
        paused(async {
            // Nothing armed: the driver sleeps and the coarse clock would
            // go stale; a deadline armed after an hour must still wait.
            let t0 = now();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let t1 = now();
            assert!(t1 - t0 >= Duration::from_secs(3600), "{:?}", t1 - t0);
            let took = fires_after(Duration::from_millis(200)).await;
            assert!(took >= Duration::from_millis(200), "{took:?}");
            assert!(took <= Duration::from_millis(200) + 2 * GRAIN, "{took:?}");
        });
    }

    #[test]
    fn a_worker_held_off_its_core_arms_from_the_real_clock() {
        // Real time: the thread blocks, as when the system does not run the
        // worker for a while (a loaded host, a paused VM), with deadlines
        // armed so the driver is awake and the coarse clock is not read
        // again until it runs. A deadline armed the moment the worker runs
        // again must still wait its whole time.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            tokio::task::spawn_local(drive());
            // The driver parks (nothing armed), then wakes for this one.
            tokio::task::yield_now().await;
            let _keeps_the_driver_awake = Sleep::after(Duration::from_secs(60));
            tokio::time::sleep(3 * GRAIN).await;
            assert!(!WHEEL.with(|w| w.parked.get()), "the driver is awake");
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(150));
                let armed_at = std::time::Instant::now();
                Sleep::after(Duration::from_millis(100)).await;
                let took = armed_at.elapsed();
                assert!(took >= Duration::from_millis(100), "fired after {took:?}");
                // Also through the HTTP library's timer, which computes its
                // deadlines from `now()`.
                std::thread::sleep(Duration::from_millis(150));
                let armed_at = std::time::Instant::now();
                let timer = Timer;
                timer
                    .sleep_until(timer.now() + Duration::from_millis(100))
                    .await;
                let took = armed_at.elapsed();
                assert!(
                    took >= Duration::from_millis(100),
                    "the HTTP timer fired after {took:?}"
                );
            }
        });
    }

    #[test]
    fn timeout_passes_a_result_through_or_runs_out() {
        paused(async {
            let quick = timeout(Duration::from_millis(50), async { 7 }).await;
            assert_eq!(quick, Ok(7));
            let slow = timeout(
                Duration::from_millis(50),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await;
            assert_eq!(slow, Err(Elapsed));
            let started = Instant::now();
            let _ = timeout(Duration::from_millis(300), std::future::pending::<()>()).await;
            let took = Instant::now() - started;
            assert!(took >= Duration::from_millis(300) && took <= Duration::from_millis(320));
            assert_eq!(armed(), 0, "a finished timeout leaves nothing armed");
        });
    }

    #[test]
    fn dropped_sleeps_free_their_slots_for_reuse() {
        paused(async {
            for _ in 0..10_000 {
                let s = Sleep::after(Duration::from_secs(30));
                drop(s);
            }
            assert_eq!(armed(), 0);
            let slots = WHEEL.with(|w| w.slots.borrow().len());
            assert_eq!(slots, 1, "one slot, reused");
            // Many at once, dropped out of order: each list stays consistent.
            let mut held: Vec<Sleep> = (0..100)
                .map(|i| Sleep::after(Duration::from_millis(i % 7)))
                .collect();
            for i in (0..100).rev().step_by(3) {
                held.swap_remove(i);
            }
            assert_eq!(armed(), held.len());
            for s in held {
                s.await;
            }
            assert_eq!(armed(), 0);
        });
    }

    #[test]
    fn the_http_timer_resets_in_place_and_rearms_after_firing() {
        paused(async {
            let timer = Timer;
            let start = timer.now();
            let mut s = timer.sleep_until(start + Duration::from_millis(100));
            // Pushed out before it fires: it waits for the new deadline.
            timer.reset(&mut s, start + Duration::from_millis(400));
            s.as_mut().await;
            let took = timer.now() - start;
            assert!(took >= Duration::from_millis(400), "{took:?}");
            assert!(took <= Duration::from_millis(400) + 2 * GRAIN, "{took:?}");
            // Fired, then reset: armed again, the same slot.
            let again = timer.now();
            timer.reset(&mut s, again + Duration::from_millis(50));
            assert_eq!(armed(), 1);
            s.as_mut().await;
            assert!(timer.now() - again >= Duration::from_millis(50));
            drop(s);
            assert_eq!(WHEEL.with(|w| w.slots.borrow().len()), 1);
        });
    }

    #[test]
    fn many_waiters_each_fire_at_their_own_deadline() {
        paused(async {
            let start = Instant::now();
            let late = Rc::new(Cell::new(0u32));
            let mut tasks = Vec::new();
            for i in 0..200u64 {
                let late = late.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let d = Duration::from_millis(i * 13 % 700);
                    let armed_at = Instant::now();
                    Sleep::after(d).await;
                    let took = Instant::now() - armed_at;
                    if took < d || took > d + 2 * GRAIN {
                        late.set(late.get() + 1);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(late.get(), 0);
            assert!(Instant::now() - start < Duration::from_millis(720));
        });
    }

    #[test]
    fn a_sleep_from_another_thread_is_left_alone() {
        paused(async {
            let s = Sleep::after(Duration::from_secs(5));
            let handle = std::thread::spawn(move || {
                // Another thread's table: polling resolves, dropping is a
                // no-op there.
                let waker = Waker::noop();
                let mut cx = Context::from_waker(waker);
                let mut s = s;
                let ready = Pin::new(&mut s).poll(&mut cx).is_ready();
                drop(s);
                ready
            });
            assert!(handle.join().expect("thread"));
            // Still armed here until it expires.
            assert_eq!(armed(), 1);
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert_eq!(armed(), 0);
        });
    }
}
