//! Work on many instances at once. Most of an instance's work is the kernel's (netlink round
//! trips, making or deleting a namespace or a veth pair), so a few at a time shorten a run over
//! many instances even on two cores; a bound keeps a deployment of hundreds of instances from
//! starting hundreds of threads.

/// Instances worked on at the same time.
pub const AT_ONCE: usize = 8;

/// `f` of every item, [`AT_ONCE`] items at a time on scoped threads; the results in the items'
/// order. A panic in `f` is passed on.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
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
