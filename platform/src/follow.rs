//! Server-streaming "follow" RPCs (the audit tail, the notification stream): read what came
//! after a cursor, send it, and wait for more: woken at once by this replica's own writes, and
//! every poll interval for what other replicas wrote. The stream ends when the client goes
//! away, on an error, or at shutdown with UNAVAILABLE saying how to resume, so a long-lived
//! stream neither holds up the drain nor ends silently.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::Status;

use crate::shutdown::Shutdown;

/// What a follow RPC answers with.
pub type FollowStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Follows from `cursor`: `fetch` returns the cursor after what it read and the items to send
/// (an unchanged cursor means nothing new); `resume` says, at shutdown, how to carry on.
pub fn follow<T, C, F, Fut>(
    mut cursor: C,
    signal: Arc<Notify>,
    shutdown: &Shutdown,
    poll: Duration,
    resume: impl Fn(&C) -> String + Send + 'static,
    mut fetch: F,
) -> FollowStream<T>
where
    T: Send + 'static,
    C: PartialEq + Clone + Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(C, Vec<T>), Status>> + Send,
{
    let stopping = shutdown.wait();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<T, Status>>(64);
    tokio::spawn(async move {
        tokio::pin!(stopping);
        loop {
            // Registered before reading, so a write in between still wakes the stream.
            let notified = signal.notified();
            match fetch(cursor.clone()).await {
                Ok((next, items)) => {
                    for item in items {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                    if next != cursor {
                        cursor = next;
                        continue;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return,
                _ = &mut stopping => {
                    let _ = tx.send(Err(Status::unavailable(resume(&cursor)))).await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn sends_what_follows_the_cursor_then_ends_at_shutdown_with_a_resume_hint() {
        let shutdown = Shutdown::new();
        let signal = Arc::new(Notify::new());
        let source = Arc::new(std::sync::Mutex::new(vec![1u64, 2, 3]));
        let read = source.clone();
        let mut stream = follow(
            0u64,
            signal.clone(),
            &shutdown,
            Duration::from_secs(60),
            |c| format!("resume after {c}"),
            move |after| {
                let items: Vec<u64> = read
                    .lock()
                    .unwrap()
                    .iter()
                    .copied()
                    .filter(|i| *i > after)
                    .collect();
                async move { Ok((items.last().copied().unwrap_or(after), items)) }
            },
        );
        for want in [1, 2, 3] {
            assert_eq!(stream.next().await.unwrap().unwrap(), want);
        }
        source.lock().unwrap().push(4);
        signal.notify_waiters();
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            4,
            "woken by the signal"
        );
        shutdown.trigger();
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert_eq!(end.message(), "resume after 4");
        assert!(stream.next().await.is_none());
    }
}
