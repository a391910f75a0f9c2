//! One engine operation at a time (attach, release, re-check), handed out in
//! the order the waiters came, and never waited for past a deadline: a pod
//! start that cannot get its turn in time fails with what held it, instead of
//! attaching after the runtime has given up on it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::deadline::Deadline;

/// The FIFO lock.
#[derive(Default)]
pub struct Turns {
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    /// What holds the turn and since when.
    holder: Option<(String, Instant)>,
    /// Tickets of the waiters, first come first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// The turn; the next waiter gets it when this drops.
pub struct Turn<'a> {
    turns: &'a Turns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.state().holder = None;
        self.turns.freed.notify_all();
    }
}

impl Turns {
    /// Waits for the turn until `deadline`; `what` describes the operation
    /// to later waiters. On expiry: what held the turn, and for how long.
    pub fn take(&self, what: String, deadline: Deadline) -> Result<Turn<'_>, String> {
        let mut state = self.state();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(ticket);
        loop {
            if state.holder.is_none() && state.queue.front() == Some(&ticket) {
                state.queue.pop_front();
                state.holder = Some((what, Instant::now()));
                return Ok(Turn { turns: self });
            }
            let left = deadline.remaining();
            if left.is_zero() {
                state.queue.retain(|t| *t != ticket);
                let busy = match &state.holder {
                    Some((op, since)) => format!("{op} (for {} ms)", since.elapsed().as_millis()),
                    None => "earlier requests".to_string(),
                };
                drop(state);
                // The next in line may be free to go now.
                self.freed.notify_all();
                return Err(busy);
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    #[test]
    fn a_waiter_gives_up_at_its_deadline_naming_the_holder() {
        let turns = Turns::default();
        let _held = turns
            .take("attach of pod a".into(), Deadline::default_wait())
            .unwrap();
        let err = turns
            .take(
                "attach of pod b".into(),
                Deadline::after(Duration::from_millis(20)),
            )
            .err()
            .unwrap();
        assert!(err.starts_with("attach of pod a (for "), "{err}");
    }

    #[test]
    fn turns_go_in_the_order_waiters_came_and_skip_those_that_gave_up() {
        let turns = Arc::new(Turns::default());
        let order = Arc::new(StdMutex::new(Vec::new()));
        let first = turns
            .take("first".into(), Deadline::default_wait())
            .unwrap();
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (mine, order) = (turns.clone(), order.clone());
            // One waiter gives up early; the others must still go in order.
            let wait = if i == 1 {
                Duration::from_millis(10)
            } else {
                Duration::from_secs(5)
            };
            waiters.push(std::thread::spawn(move || {
                if let Ok(_turn) = mine.take(format!("w{i}"), Deadline::after(wait)) {
                    order.lock().unwrap().push(i);
                }
            }));
            // Let each waiter queue before the next one comes.
            while turns.state().next_ticket < i as u64 + 2 {
                std::thread::yield_now();
            }
        }
        std::thread::sleep(Duration::from_millis(30));
        drop(first);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 2, 3]);
    }
}
