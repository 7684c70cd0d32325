//! A sink's bounded queue: the dispatcher pushes without waiting (a full queue loses its oldest
//! alert), the sink takes batches.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::fanout::PublishedAlert;

#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    state: Mutex<State>,
    /// Woken on every push and at close (one consumer).
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Arc<PublishedAlert>>,
    closed: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `alert`; true when the oldest alert was dropped to make room.
    pub(crate) fn push(&self, alert: Arc<PublishedAlert>) -> bool {
        let dropped = {
            let mut state = self.lock();
            let full = state.items.len() >= self.capacity;
            if full {
                state.items.pop_front();
            }
            state.items.push_back(alert);
            full
        };
        self.changed.notify_one();
        dropped
    }

    /// No more pushes: the consumer takes what is left, then gets None.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Take everything queued (for counting what is left at shutdown).
    pub(crate) fn drain(&self) -> Vec<Arc<PublishedAlert>> {
        self.lock().items.drain(..).collect()
    }

    /// The next batch of at most `max` alerts: once one is queued, wait up to `linger` for
    /// `max` (not at all once closed). None when closed and empty.
    pub(crate) async fn next_batch(
        &self,
        max: usize,
        linger: Duration,
    ) -> Option<Vec<Arc<PublishedAlert>>> {
        let mut deadline = None;
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.lock();
                if state.items.is_empty() {
                    if state.closed {
                        return None;
                    }
                } else {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + linger);
                    if state.items.len() >= max || state.closed || Instant::now() >= deadline {
                        let n = state.items.len().min(max);
                        return Some(state.items.drain(..n).collect());
                    }
                }
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(cursor: u64) -> Arc<PublishedAlert> {
        Arc::new(PublishedAlert {
            cursor,
            node: "n".into(),
            alert: crate::testing::alert_line(Some("ns"), Some("p"), "c", "r", 1),
        })
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_and_batches_keep_order() {
        let queue = Queue::new(3);
        let dropped: Vec<bool> = (0..5).map(|c| queue.push(alert(c))).collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        let batch = queue.next_batch(2, Duration::ZERO).await.unwrap();
        assert_eq!(batch.iter().map(|a| a.cursor).collect::<Vec<_>>(), [2, 3]);
        queue.close();
        let batch = queue.next_batch(2, Duration::from_mins(1)).await.unwrap();
        assert_eq!(batch.iter().map(|a| a.cursor).collect::<Vec<_>>(), [4]);
        assert!(queue.next_batch(2, Duration::ZERO).await.is_none());
    }

    #[tokio::test]
    async fn a_partial_batch_waits_for_its_linger_time() {
        let queue = Arc::new(Queue::new(10));
        queue.push(alert(0));
        let started = Instant::now();
        let batch = queue
            .next_batch(5, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(200));
        for c in 1..=5 {
            queue.push(alert(c));
        }
        let started = Instant::now();
        let batch = queue.next_batch(5, Duration::from_secs(10)).await.unwrap();
        assert_eq!(batch.len(), 5);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
