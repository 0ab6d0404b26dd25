//! Subscribe and unsubscribe, answered in order, one at a time, without holding the
//! connection: the store read a subscribe waits for is a [`Read`] the connection's loop polls
//! beside its writes, pings and feed changes.
//!
//! One event: register with the hub, hold the event's updates back in the queue, read its
//! markets; then answer `subscribed`, queue the snapshots and let the held-back updates go
//! (the queue makes the newest of each market the snapshot). `*`: register, answer
//! `subscribed`, then page through every event; a page is read only when the queue has room
//! for it beside the live updates, and queued only when that room is there, so a client that
//! keeps up is never taken for a slow one however many events there are or however slow the
//! reads. Meanwhile the queue sends a live update of a market not shown yet as its snapshot.

use super::{Connection, Exit};
use crate::store::{event_count, Source, StoreError};
use futures_util::future::BoxFuture;
use odds_contracts::ws::{ErrorCode, ServerMessage, ALL_EVENTS};
use odds_contracts::{Market, OddsUpdate};
use std::sync::{Arc, Mutex, PoisonError};

/// Most events per page of a `*` snapshot.
const SNAPSHOT_PAGE: usize = 500;

pub enum Request {
    Subscribe(String),
    Unsubscribe(String),
}

/// A store read in flight.
pub type Read = BoxFuture<'static, ReadDone>;

pub enum ReadDone {
    Event {
        event: Arc<str>,
        result: Result<Option<(Vec<OddsUpdate>, Source)>, StoreError>,
    },
    Page(Result<Vec<OddsUpdate>, StoreError>),
}

/// A `*` snapshot in progress.
pub struct Paging {
    /// The last event queued (`None`: none yet).
    after: Option<String>,
    /// A page read but not yet queued: it waits for room.
    ready: Option<Vec<OddsUpdate>>,
}

/// Completes with the read in flight, which it then clears; never, when there is none.
pub async fn poll(read: &mut Mutex<Option<Read>>) -> ReadDone {
    let read = read.get_mut().unwrap_or_else(PoisonError::into_inner);
    let Some(future) = read.as_mut() else {
        return std::future::pending().await;
    };
    let done = future.await;
    *read = None;
    done
}

impl Connection {
    fn reading(&mut self) -> &mut Option<Read> {
        self.read.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events per `*` page: at most half the queue, leaving the other half to live updates.
    fn page_events(&self) -> usize {
        (self.ctx.max_pending_events / 2 / Market::ALL.len()).clamp(1, SNAPSHOT_PAGE)
    }

    fn subscription_count(&self) -> usize {
        self.events.len() + usize::from(self.all_events)
    }

    /// Moves the `*` snapshot on and starts waiting requests, as far as it can without a read
    /// in flight.
    pub(super) fn advance(&mut self) -> Option<Exit> {
        loop {
            if self.paging.is_some() {
                self.pump_pages();
                if self.paging.is_some() {
                    return None;
                }
            }
            if self.reading().is_some() {
                return None;
            }
            let request = self.requests.pop_front()?;
            let exit = match request {
                Request::Subscribe(event_id) => self.subscribe(event_id),
                Request::Unsubscribe(event_id) => self.unsubscribe(event_id),
            };
            if exit.is_some() {
                return exit;
            }
        }
    }

    /// Queues a page that has room, and reads the next one when there is room for it.
    fn pump_pages(&mut self) {
        let max = self.ctx.max_pending_events;
        let page_events = self.page_events();
        let Some(paging) = self.paging.as_mut() else {
            return;
        };
        if let Some(page) = paging.ready.take() {
            if self.queue.pending_len() + page.len() > max {
                paging.ready = Some(page);
                return;
            }
            for update in &page {
                self.queue.push(&self.ctx.hub.encode(update), true);
            }
            super::count(&self.ctx.metrics, self.queue.flush(false).1);
            match page.last() {
                Some(last) if event_count(&page) == page_events => {
                    paging.after = Some(last.event_id.clone());
                }
                _ => {
                    self.paging = None;
                    self.queue.end_all_snapshot();
                    return;
                }
            }
        }
        let room = self.queue.pending_len() + page_events * Market::ALL.len() <= max;
        let after = paging.after.clone();
        if self.reading().is_none() && room {
            let store = self.ctx.store.clone();
            let limit = u32::try_from(page_events).unwrap_or(1);
            *self.reading() = Some(Box::pin(async move {
                ReadDone::Page(store.current_after(after.as_deref(), limit).await)
            }));
        }
    }

    pub(super) fn on_read(&mut self, done: ReadDone) -> Option<Exit> {
        match done {
            ReadDone::Event { event, result } => self.answer_subscribe(event, result),
            ReadDone::Page(Ok(page)) => {
                if let Some(paging) = self.paging.as_mut() {
                    paging.ready = Some(page);
                }
                None
            }
            ReadDone::Page(Err(error)) => {
                self.paging = None;
                self.queue.end_all_snapshot();
                let text = error.to_string();
                self.error(ErrorCode::Unavailable, text, Some(ALL_EVENTS))
            }
        }
    }

    fn subscribe(&mut self, event_id: String) -> Option<Exit> {
        let already = if event_id == ALL_EVENTS {
            self.all_events
        } else {
            self.events.contains(event_id.as_str())
        };
        if !already && self.subscription_count() >= self.ctx.max_subscriptions {
            let text = format!(
                "at most {} subscriptions per connection",
                self.ctx.max_subscriptions
            );
            let code = ErrorCode::TooManySubscriptions;
            return self.error(code, text, Some(&event_id));
        }
        if event_id == ALL_EVENTS {
            return self.subscribe_all();
        }
        if let Err(e) = odds_contracts::validate_event_id(&event_id) {
            let code = ErrorCode::InvalidEventId;
            return self.error(code, e.to_string(), Some(&event_id));
        }
        let event: Arc<str> = Arc::from(event_id.as_str());
        // Hold back, then register, then read: an update published while we read the
        // snapshot is queued, not lost, and waits for the answer.
        self.queue.hold_back(&event);
        self.ctx.hub.subscribe(self.id, &self.queue, event.clone());
        let store = self.ctx.store.clone();
        *self.reading() = Some(Box::pin(async move {
            let result = store.markets(&event).await;
            ReadDone::Event { event, result }
        }));
        None
    }

    fn answer_subscribe(
        &mut self,
        event: Arc<str>,
        result: Result<Option<(Vec<OddsUpdate>, Source)>, StoreError>,
    ) -> Option<Exit> {
        let event_id = event.to_string();
        let (code, text) = match result {
            Ok(Some((markets, _))) => {
                if self.events.insert(event) {
                    self.ctx.metrics.ws_subscriptions.inc();
                }
                let reply = self.reply(ServerMessage::Subscribed { event_id });
                for update in &markets {
                    self.queue.push(&self.ctx.hub.encode(update), true);
                }
                self.queue.release();
                self.flush(false);
                return reply;
            }
            Ok(None) => (
                ErrorCode::UnknownEvent,
                format!("no odds known for event {event_id:?}"),
            ),
            Err(e) => (ErrorCode::Unavailable, e.to_string()),
        };
        self.queue.release();
        self.flush(false);
        if !self.events.contains(event_id.as_str()) {
            self.ctx.hub.unsubscribe(self.id, &event_id);
            if !self.all_events {
                self.queue.forget(&event_id);
            }
        }
        self.error(code, text, Some(&event_id))
    }

    fn subscribe_all(&mut self) -> Option<Exit> {
        // Answer first: once registered, the fan-out may write a live update (as its market's
        // snapshot) at any moment, and the client must hear `subscribed` before that. Nothing
        // published in between is missed: the pages are read after registering.
        let reply = ServerMessage::Subscribed {
            event_id: ALL_EVENTS.to_owned(),
        };
        if let Some(exit) = self.reply(reply) {
            return Some(exit);
        }
        // Before registering: the first update that comes must already find every market
        // awaiting its snapshot.
        self.queue.begin_all_snapshot();
        self.ctx.hub.subscribe_all(self.id, &self.queue);
        if !self.all_events {
            self.all_events = true;
            self.ctx.metrics.ws_subscriptions.inc();
        }
        self.paging = Some(Paging {
            after: None,
            ready: None,
        });
        None
    }

    fn unsubscribe(&mut self, event_id: String) -> Option<Exit> {
        if event_id == ALL_EVENTS {
            self.ctx.hub.unsubscribe_all(self.id);
            if std::mem::take(&mut self.all_events) {
                self.ctx.metrics.ws_subscriptions.dec();
            }
            // Updates of events no longer followed at all must not go out after `unsubscribed`.
            let events = &self.events;
            self.queue.forget_events(|event| !events.contains(event));
        } else {
            self.ctx.hub.unsubscribe(self.id, &event_id);
            // Still followed through `*`: what is pending for it is still owed to the client.
            if !self.all_events {
                self.queue.forget(&event_id);
            }
            if self.events.remove(event_id.as_str()) {
                self.ctx.metrics.ws_subscriptions.dec();
            }
        }
        self.reply(ServerMessage::Unsubscribed { event_id })
    }
}
