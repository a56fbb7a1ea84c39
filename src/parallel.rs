//! Work on many instances at once. Most of an instance's work is the kernel's (netlink round
//! trips, making or deleting a namespace or a veth pair), so a few at a time shorten a run over
//! many instances even on two cores; a bound keeps a deployment of hundreds of instances from
//! starting hundreds of threads.

use crate::netns::{self, Netns};

/// Instances worked on at the same time.
pub const AT_ONCE: usize = 8;

/// `f` of every item, on [`AT_ONCE`] scoped threads that take the items in turn; the results
/// in the items' order. A panic in `f` is passed on.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_own(items, AT_ONCE, |item, _| f(item))
}

/// Lowers the calling thread's scheduling priority to the least (nice 19): for work that can
/// wait, started beside work that cannot. On a busy machine such a thread runs on what the
/// others leave; once they wait for it, it has the CPU to itself. Linux applies the nice value
/// of `setpriority(PRIO_PROCESS, tid)` to that one thread.
pub fn yield_to_others() {
    // SAFETY: gettid and setpriority take plain values and touch no memory of ours; a failure
    // leaves the thread's priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Proof that the calling thread is one of [`map_own`]'s, which ends with its items and goes
/// back to its own namespace between them: a thread that may enter another network namespace
/// without the namespace leaking into other work. Not `Send`, so it stays on its thread.
pub struct OwnThread {
    /// The thread's own namespace, opened when it first leaves it.
    home: std::cell::OnceCell<Netns>,
    moved: std::cell::Cell<bool>,
    _here: std::marker::PhantomData<*const ()>,
}

impl OwnThread {
    /// Moves the calling thread into `ns` for the rest of its item's work.
    pub fn enter(&self, ns: &Netns) -> Result<(), netns::Error> {
        if self.home.get().is_none() {
            let _ = self.home.set(Netns::current()?);
        }
        self.moved.set(true);
        netns::enter_own_thread(ns, self)
    }

    /// Back in the thread's own namespace, if an item left it.
    fn go_home(&self) {
        if self.moved.replace(false) {
            let home = self.home.get().expect("opened before leaving");
            netns::enter_own_thread(home, self).expect("going back to the thread's namespace");
        }
    }
}

/// [`map`], where `f` may move its thread into the item's namespace ([`OwnThread::enter`]):
/// no second thread is started inside the namespace for the item's work there. `workers`
/// threads (at most one per item) take the items in turn; a thread that entered a namespace
/// goes back to its own before its next item (an item whose thread cannot go back panics).
pub fn map_own<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T, &OwnThread) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let own = OwnThread {
            home: std::cell::OnceCell::new(),
            moved: std::cell::Cell::new(false),
            _here: std::marker::PhantomData,
        };
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            own.go_home();
            done.push((i, f(item, &own)));
        }
    };
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..workers.clamp(1, items.len().max(1)))
            .map(|_| scope.spawn(work))
            .collect();
        running
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread of map_own's that enters a namespace is in it for its item's work, is back in
    /// its own for its next item, and the caller stays where it was. Needs root (it makes a
    /// namespace); skipped otherwise.
    #[test]
    fn an_own_thread_enters_for_its_item_only() {
        let made = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Netns::open_path("/proc/thread-self/ns/net").ok()
        });
        let Some(other) = made.join().unwrap() else {
            eprintln!("skipped: needs root");
            return;
        };
        let here = Netns::current().unwrap().id().unwrap();
        let there = other.id().unwrap();
        assert_ne!(here, there);
        let items: Vec<u32> = (0..6).collect();
        for workers in [1, 2, 8] {
            let seen = map_own(&items, workers, |i, own| {
                if i % 2 == 0 {
                    own.enter(&other).unwrap();
                }
                Netns::current().unwrap().id().unwrap()
            });
            let want: Vec<_> = (items.iter())
                .map(|i| if i % 2 == 0 { there } else { here })
                .collect();
            assert_eq!(seen, want, "{workers} workers");
        }
        assert_eq!(Netns::current().unwrap().id().unwrap(), here);
    }

    #[test]
    fn results_keep_the_items_order() {
        let items: Vec<u32> = (0..20).collect();
        let out = super::map(&items, |i| {
            std::thread::sleep(std::time::Duration::from_millis(u64::from(20 - i)));
            i * 2
        });
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    }
}
