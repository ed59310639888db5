//! Waiting for a few member operations at once without allocating: a stripe write's data and
//! parity writes, its pre-reads. [`blockdev::join::join_all`] takes a `Vec` and allocates two
//! more for its slots and results; the write path of a small RAID 5 write runs two or three of
//! these per request, so it keeps them inline here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use blockdev::Result;
use smallvec::SmallVec;

/// Inline capacity: up to this many operations allocate nothing.
pub(crate) const INLINE: usize = 4;

/// Results of [`join`], in the order of its futures.
pub(crate) type Results = SmallVec<[Result<()>; INLINE]>;

enum Slot<F> {
    Running(F),
    Done(Result<()>),
    Taken,
}

/// Resolves when every future has; yields each result in order.
pub(crate) struct Join<F> {
    slots: SmallVec<[Slot<F>; INLINE]>,
}

/// Drive all `futs` concurrently; resolves to their results in order.
pub(crate) fn join<F: Future<Output = Result<()>> + Unpin>(futs: impl IntoIterator<Item = F>) -> Join<F> {
    Join { slots: futs.into_iter().map(Slot::Running).collect() }
}

impl<F: Future<Output = Result<()>> + Unpin> Future for Join<F> {
    type Output = Results;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Results> {
        let mut pending = false;
        for slot in self.slots.iter_mut() {
            if let Slot::Running(f) = slot {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(r) => *slot = Slot::Done(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        let out = self
            .slots
            .iter_mut()
            .map(|s| match std::mem::replace(s, Slot::Taken) {
                Slot::Done(r) => r,
                _ => Ok(()),
            })
            .collect();
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::{Error, ErrorKind, IoCtx};

    /// Ready on its second poll (so the join must come back for it).
    struct Later(u8, Option<Result<()>>);

    impl Future for Later {
        type Output = Result<()>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
            if self.0 == 0 {
                return Poll::Ready(self.1.take().unwrap_or(Ok(())));
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn results_come_in_order_whenever_each_finishes() {
        let io = IoCtx::new().unwrap();
        let futs = vec![
            Later(3, Some(Ok(()))),
            Later(0, Some(Err(Error::new(ErrorKind::Io, "second")))),
            Later(1, Some(Ok(()))),
            Later(2, Some(Err(Error::new(ErrorKind::Io, "fourth")))),
            Later(0, Some(Ok(()))),
        ];
        let got = io.block_on(join(futs));
        let shown: Vec<String> = got.iter().map(|r| r.as_ref().err().map_or("ok".into(), |e| e.to_string())).collect();
        assert_eq!(shown.len(), 5);
        assert_eq!(shown[0], "ok");
        assert!(shown[1].contains("second"), "{shown:?}");
        assert_eq!(shown[2], "ok");
        assert!(shown[3].contains("fourth"), "{shown:?}");
        assert_eq!(shown[4], "ok");
        assert!(io.block_on(join(Vec::<Later>::new())).is_empty());
    }
}
