//! Waiting for several operations at once (a layer's sub-requests issued in parallel).
//!
//! The futures and their results live inline up to [`INLINE`] of them: a small RAID 5 write
//! joins its pre-reads and then its data and parity writes, two or three joins of two to four
//! operations per request, and a qcow2 write that spans two clusters joins two; none of them
//! allocates here. Longer lists (a superblock write to many members, a metadata write-back)
//! allocate once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use smallvec::SmallVec;

use crate::Result;

/// Inline capacity: joining up to this many operations allocates nothing.
pub const INLINE: usize = 4;

/// Results of [`join_all`], in the order of its futures.
pub type Results = SmallVec<[Result<()>; INLINE]>;

enum Slot<F> {
    Running(F),
    Done(Result<()>),
    Taken,
}

/// Resolves when every future has; yields each result in order.
#[must_use = "futures do nothing unless polled"]
pub struct JoinAll<F> {
    slots: SmallVec<[Slot<F>; INLINE]>,
}

/// Drive all `futs` concurrently; resolves to their results in order.
pub fn join_all<F: Future<Output = Result<()>> + Unpin>(futs: impl IntoIterator<Item = F>) -> JoinAll<F> {
    JoinAll { slots: futs.into_iter().map(Slot::Running).collect() }
}

impl<F: Future<Output = Result<()>> + Unpin> Future for JoinAll<F> {
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
                // Polled again after it resolved: nothing is left to report.
                _ => Ok(()),
            })
            .collect();
        Poll::Ready(out)
    }
}

/// Drive all `futs` concurrently; waits for every one, then returns the first error, if any.
/// (Waiting for all keeps a failed request from leaving hidden work running behind it.)
pub fn try_join_all<F: Future<Output = Result<()>> + Unpin>(futs: impl IntoIterator<Item = F>) -> TryJoinAll<F> {
    TryJoinAll { join: join_all(futs) }
}

/// The future [`try_join_all`] returns.
#[must_use = "futures do nothing unless polled"]
pub struct TryJoinAll<F> {
    join: JoinAll<F>,
}

impl<F: Future<Output = Result<()>> + Unpin> Future for TryJoinAll<F> {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.join).poll(cx).map(|results| results.into_iter().find(Result::is_err).unwrap_or(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind, IoCtx};

    /// Ready with its result on poll number `polls + 1` (so the join must come back for it).
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

    fn shown(rs: &[Result<()>]) -> Vec<String> {
        rs.iter().map(|r| r.as_ref().err().map_or("ok".into(), |e| e.to_string())).collect()
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
        let got = shown(&io.block_on(join_all(futs)));
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], "ok");
        assert!(got[1].contains("second"), "{got:?}");
        assert_eq!(got[2], "ok");
        assert!(got[3].contains("fourth"), "{got:?}");
        assert_eq!(got[4], "ok");
        assert!(io.block_on(join_all(Vec::<Later>::new())).is_empty());
    }

    #[test]
    fn up_to_inline_operations_stay_inline() {
        let io = IoCtx::new().unwrap();
        let join = join_all((0..INLINE).map(|i| Later(i as u8, None)));
        assert!(!join.slots.spilled());
        let got = io.block_on(join);
        assert_eq!(got.len(), INLINE);
        assert!(!got.spilled(), "the results of {INLINE} operations were put on the heap");
        let more = io.block_on(join_all((0..INLINE + 1).map(|i| Later(i as u8, None))));
        assert_eq!(more.len(), INLINE + 1);
    }

    #[test]
    fn try_join_all_waits_for_every_one_and_returns_the_first_error() {
        let io = IoCtx::new().unwrap();
        let done = std::rc::Rc::new(std::cell::Cell::new(0));
        let futs: Vec<crate::IoFuture> = (0..6u8)
            .map(|i| {
                let done = done.clone();
                let fut: crate::IoFuture = Box::pin(async move {
                    let fail = (i == 2 || i == 4).then(|| Error::new(ErrorKind::Io, format!("op {i}")));
                    Later(5 - i, fail.map(Err)).await?;
                    done.set(done.get() + 1);
                    Ok(())
                });
                fut
            })
            .collect();
        let e = io.block_on(try_join_all(futs)).unwrap_err();
        assert!(e.to_string().contains("op 2"), "{e}");
        assert_eq!(done.get(), 4, "every operation that succeeds ran to its end");
        io.block_on(try_join_all(vec![Later(2, None)])).unwrap();
        let e = io.block_on(try_join_all([Later(1, Some(Err(Error::new(ErrorKind::Io, "only"))))])).unwrap_err();
        assert!(e.to_string().contains("only"), "{e}");
        io.block_on(try_join_all(Vec::<Later>::new())).unwrap();
    }
}
