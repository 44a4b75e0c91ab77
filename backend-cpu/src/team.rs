//! A team of threads that spin between parallel sections.
//!
//! A decode step of a small model is about 150 parallel sections (the products, attention) of a few
//! microseconds of work each. Handing each to rayon's pool, whose threads sleep between sections, costs several
//! microseconds of wake-up per section, more than the work on 8 or 16 threads. A team's threads instead
//! spin for up to [`SPIN`] after each section, watching for the next, and only then sleep; a section is
//! published with one atomic increment, and the calling thread takes tasks too.
//!
//! One section runs at a time: a second caller while one runs (another request's step on a server) gets
//! `false` from [`Team::run`] and uses rayon instead. A task that itself starts a section runs it in
//! sequence.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a team thread spins after a section before it sleeps.
const SPIN: Duration = Duration::from_millis(1);

thread_local! {
    /// The team the calling thread's sections go to (set by [`Team::enter`]).
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Whether this thread is running a task of a section.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// One section: `f(i)` for every `i < n`. `f` is borrowed from the caller of [`Team::run`], which does not return
/// before `done == n`; a task index is claimed from `next` before `f` is called, so once every index is
/// claimed and done, no thread calls `f` again, even one that still holds this `Job`.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// Safety: `f` is `Sync` and is only called while the caller of `Team::run` keeps it alive (see `Job`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            IN_TASK.set(true);
            // Safety: `i < n` was claimed, so the caller of `run` is still waiting and `f` is alive.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*self.f)(i) }));
            IN_TASK.set(false);
            if result.is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// What the team's threads and the caller share.
struct Shared {
    /// Bumped once per published section.
    epoch: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    stop: AtomicBool,
    /// Threads asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// Threads that take the tasks of parallel sections, spinning between them.
pub(crate) struct Team {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Held while a section runs.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Team({} threads)", self.threads.len() + 1)
    }
}

impl Team {
    /// A team of `threads` threads in all: the caller of each section and `threads - 1` spawned ones.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut team = Team { shared: shared.clone(), threads: Vec::new(), busy: Mutex::new(()) };
        for i in 1..threads.max(1) {
            let (shared, seen) = (shared.clone(), shared.epoch.load(Ordering::SeqCst));
            // On an error `team` is dropped here, which stops the threads already started.
            team.threads
                .push(std::thread::Builder::new().name(format!("tern-cpu-team-{i}")).spawn(move || member(&shared, seen))?);
        }
        Ok(team)
    }

    /// Makes this team the one the calling thread's sections go to until the guard drops.
    pub(crate) fn enter(&self) -> Entered {
        Entered(CURRENT.replace(self))
    }

    /// Runs `f(i)` for every `i < n` on the team of the calling thread, if it has one that is free; `false`
    /// (nothing run) otherwise. Tasks started from a task run in sequence (`true`).
    pub(crate) fn run_current(n: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        if IN_TASK.get() {
            (0..n).for_each(f);
            return true;
        }
        let team = CURRENT.get();
        if team.is_null() {
            return false;
        }
        // Safety: `enter`'s guard clears the pointer before the team can be dropped (it borrows the team).
        unsafe { &*team }.run(n, f)
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        if self.threads.is_empty() || n <= 1 {
            (0..n).for_each(f);
            return true;
        }
        let busy = match self.busy.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        // Safety (of the lifetime erasure): this function does not return before every task is done.
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job { f, n, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panicked: AtomicBool::new(false) });
        let s = &*self.shared;
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        job.work();
        while job.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(busy);
        if job.panicked.load(Ordering::Relaxed) {
            // A task's panic is the section's (as with rayon).
            std::panic::resume_unwind(Box::new("a task of a parallel section panicked"));
        }
        true
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Restores the calling thread's previous team when dropped.
pub(crate) struct Entered(*const Team);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

/// A team thread: wait for a new section (spinning, then asleep), take its tasks, repeat.
/// `seen` is the epoch when the team was made, so that a section published before this thread first runs is
/// still taken, and a team dropped before then still stops it.
fn member(s: &Shared, mut seen: u64) {
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Asleep until the next section: counted first, so a publisher that bumps the epoch after the
            // check below sees the count and wakes us (both sides SeqCst), and the check is under the lock
            // the publisher takes to notify, so the wake-up cannot fall between the check and the wait.
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            drop(g);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            seen = s.epoch.load(Ordering::Acquire);
            break;
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let job = s.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(job) = job {
            job.work();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_over_many_sections() {
        let team = Team::new(4).unwrap();
        let _in = team.enter();
        for n in [0usize, 1, 2, 3, 7, 64, 1000] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                assert!(Team::run_current(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }));
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
            }
        }
    }

    #[test]
    fn sections_after_the_team_has_slept_still_run() {
        let team = Team::new(3).unwrap();
        let _in = team.enter();
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            let sum = AtomicUsize::new(0);
            assert!(Team::run_current(100, &|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            }));
            assert_eq!(sum.load(Ordering::Relaxed), 4950);
        }
    }

    #[test]
    fn nested_sections_run_in_sequence_and_a_busy_team_declines() {
        let team = Team::new(2).unwrap();
        let _in = team.enter();
        let sum = AtomicUsize::new(0);
        assert!(Team::run_current(4, &|_| {
            assert!(Team::run_current(3, &|j| {
                sum.fetch_add(j, Ordering::Relaxed);
            }));
        }));
        assert_eq!(sum.load(Ordering::Relaxed), 12);
        let _busy = team.busy.lock().unwrap();
        assert!(!Team::run_current(4, &|_| {}));
    }

    #[test]
    fn a_panicking_task_panics_the_section_and_the_team_goes_on() {
        let team = Team::new(3).unwrap();
        let _in = team.enter();
        let r = catch_unwind(AssertUnwindSafe(|| Team::run_current(50, &|i| assert!(i != 17, "task 17"))));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        assert!(Team::run_current(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        }));
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn without_a_team_nothing_runs() {
        assert!(!Team::run_current(4, &|_| {}));
    }
}
