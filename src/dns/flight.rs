//! Coalescing of identical questions in flight on one core.
//!
//! The first asker of a question becomes its [`Leader`]: it sends the query and publishes the
//! outcome through a shared [`Flight`]. Later askers of the same question await the flight
//! instead of querying. If the leader's future is dropped before the reply (its delivery
//! attempt was cancelled), the flight is marked abandoned and the waiters ask anew.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::DnsOutcome;
use super::wire::{QuestionKey, Records};

#[derive(Debug, Default)]
enum State {
    #[default]
    Pending,
    Done(DnsOutcome<Records>),
    Abandoned,
}

/// The shared result of one upstream query.
#[derive(Debug, Default)]
pub struct Flight {
    state: RefCell<State>,
    waiters: RefCell<Vec<Waker>>,
}

impl Flight {
    /// The leader's outcome, or `None` if the leader gave up.
    pub async fn wait(&self) -> Option<DnsOutcome<Records>> {
        poll_fn(|cx| match &*self.state.borrow() {
            State::Pending => {
                let mut waiters = self.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Done(outcome) => Poll::Ready(Some(outcome.clone())),
            State::Abandoned => Poll::Ready(None),
        })
        .await
    }

    fn settle(&self, state: State) {
        *self.state.borrow_mut() = state;
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Held by the asker that sends the query; publishes its outcome, or the abandonment when
/// dropped unfinished, and removes the flight from the registry either way.
pub struct Leader<'a> {
    registry: &'a RefCell<HashMap<QuestionKey, Rc<Flight>>>,
    key: QuestionKey,
    flight: Rc<Flight>,
    finished: bool,
}

impl<'a> Leader<'a> {
    pub fn new(
        registry: &'a RefCell<HashMap<QuestionKey, Rc<Flight>>>,
        key: QuestionKey,
        flight: Rc<Flight>,
    ) -> Leader<'a> {
        Leader {
            registry,
            key,
            flight,
            finished: false,
        }
    }

    /// Hands `outcome` to every waiter.
    pub fn finish(mut self, outcome: DnsOutcome<Records>) {
        self.finished = true;
        self.flight.settle(State::Done(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut registry = self.registry.borrow_mut();
        if registry
            .get(&self.key)
            .is_some_and(|f| Rc::ptr_eq(f, &self.flight))
        {
            registry.remove(&self.key);
        }
        drop(registry);
        if !self.finished {
            self.flight.settle(State::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn key() -> QuestionKey {
        QuestionKey {
            name: "amx.example.net.".to_string(),
            record_type: 15,
        }
    }

    #[test]
    fn waiter_receives_the_leaders_outcome_and_registry_is_emptied() {
        let registry = RefCell::new(HashMap::new());
        let flight = Rc::new(Flight::default());
        registry.borrow_mut().insert(key(), Rc::clone(&flight));
        let leader = Leader::new(&registry, key(), Rc::clone(&flight));

        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting = pin!(flight.wait());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());

        leader.finish(DnsOutcome::NxDomain);
        assert_eq!(
            waiting.as_mut().poll(&mut cx),
            Poll::Ready(Some(DnsOutcome::NxDomain))
        );
        assert!(registry.borrow().is_empty());
    }

    #[test]
    fn dropped_leader_releases_waiters_as_abandoned() {
        let registry = RefCell::new(HashMap::new());
        let flight = Rc::new(Flight::default());
        registry.borrow_mut().insert(key(), Rc::clone(&flight));
        let leader = Leader::new(&registry, key(), Rc::clone(&flight));

        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting = pin!(flight.wait());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());

        drop(leader);
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(None));
        assert!(registry.borrow().is_empty());
    }
}
