//! Per-process scratch values: buffers whose heap capacity is kept from one
//! request to the next, so the PUBLISH path does not allocate for them.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` with the thread's scratch value in `key` (as the last caller
/// left it: `f` resets what it needs), or with a fresh `T` when the scratch
/// is in use further up the stack (a consumer callback that publishes from
/// inside our reply handling) or the thread is exiting.
pub fn with_scratch<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut f = Some(f);
    let r = key
        .try_with(|c| {
            let mut v = c.try_borrow_mut().ok()?;
            f.take().map(|f| f(&mut v))
        })
        .ok()
        .flatten();
    match (r, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut T::default()),
        // `f` was taken only to run, and then gave `Some` (the arm above).
        (None, None) => unreachable!("with_scratch: the closure ran without a result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn reuses_the_buffer_and_nests() {
        let cap = with_scratch(&BUF, |b| {
            b.clear();
            b.extend_from_slice(&[1; 100]);
            // Nested use gets its own value.
            let inner = with_scratch(&BUF, |b2| {
                assert!(b2.is_empty());
                b2.push(7);
                b2.len()
            });
            assert_eq!(inner, 1);
            b.capacity()
        });
        with_scratch(&BUF, |b| {
            assert_eq!(b.len(), 100, "as the last caller left it");
            assert_eq!(b.capacity(), cap);
        });
    }
}
