//! Work on many instances at once. Most of an instance's work is the kernel's (netlink round
//! trips, making or deleting a namespace or a veth pair), so a few at a time shorten a run over
//! many instances even on two cores; a bound keeps a deployment of hundreds of instances from
//! starting hundreds of threads.

use crate::netns::{self, Netns};

/// Instances worked on at the same time.
pub const AT_ONCE: usize = 8;

/// `f` of every item, [`AT_ONCE`] items at a time on scoped threads; the results in the items'
/// order. A panic in `f` is passed on.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_own(items, |item, _| f(item))
}

/// Proof that the calling thread is one [`map_own`] started for one item, and ends with it: a
/// thread that may enter another network namespace without the namespace leaking into other
/// work. Not `Send`, so it stays on its thread.
pub struct OwnThread(std::marker::PhantomData<*const ()>);

impl OwnThread {
    /// Moves the calling thread into `ns` for the rest of its item's work.
    pub fn enter(&self, ns: &Netns) -> Result<(), netns::Error> {
        netns::enter_own_thread(ns, self)
    }
}

/// [`map`], where `f` may move its thread into the item's namespace ([`OwnThread::enter`]):
/// one thread instead of a second one started inside the namespace for the item's work there.
pub fn map_own<T: Sync, R: Send>(items: &[T], f: impl Fn(&T, &OwnThread) -> R + Sync) -> Vec<R> {
    let f = &|item: &T| f(item, &OwnThread(std::marker::PhantomData));
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(AT_ONCE) {
        std::thread::scope(|scope| {
            let running: Vec<_> = group
                .iter()
                .map(|item| scope.spawn(move || f(item)))
                .collect();
            out.extend(
                running
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread of map_own's that enters a namespace is in it for its item's work, and the
    /// caller stays where it was. Needs root (it makes a namespace); skipped otherwise.
    #[test]
    fn an_own_thread_enters_and_the_caller_stays() {
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
        let seen = map_own(&[1, 2, 3], |_, own| {
            own.enter(&other).unwrap();
            Netns::current().unwrap().id().unwrap()
        });
        assert_eq!(seen, vec![there; 3]);
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
