//! Waiting for several operations at once (a layer's sub-requests issued in parallel).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::{IoFuture, Result};

/// Resolves when every future has; yields each result in order.
pub struct JoinAll {
    futs: Vec<Option<IoFuture>>,
    results: Vec<Option<Result<()>>>,
}

/// Drive all `futs` concurrently; resolves to their results in order.
pub fn join_all(futs: Vec<IoFuture>) -> JoinAll {
    let n = futs.len();
    JoinAll { futs: futs.into_iter().map(Some).collect(), results: (0..n).map(|_| None).collect() }
}

impl Future for JoinAll {
    type Output = Vec<Result<()>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut pending = false;
        for (slot, res) in this.futs.iter_mut().zip(this.results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *res = Some(r);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.results.iter_mut().map(|r| r.take().unwrap_or(Ok(()))).collect())
    }
}

/// Drive all `futs` concurrently; waits for every one, then returns the first error, if any.
/// (Waiting for all keeps a failed request from leaving hidden work running behind it.)
pub async fn try_join_all(futs: Vec<IoFuture>) -> Result<()> {
    if futs.len() == 1 {
        let mut futs = futs;
        return futs.pop().expect("one future").await;
    }
    let mut first_err = None;
    for r in join_all(futs).await {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
