//! Events about a pipeline: what `kubectl describe oddspipeline` and `kubectl get events`
//! show of the operator's work.
//!
//! Kept apart from the reconcile so the two rules that apply to every event are stated once:
//! publishing never fails a reconcile (a refused event is logged and counted), and a note
//! never exceeds what the API server accepts (1 KiB), or the event would be lost.

use crate::crd::OddsPipeline;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;

/// Where events go and where a refused one is counted: the reconcile's context implements
/// it, so this module does not depend on the controller that calls it.
pub(crate) trait EventSink {
    fn recorder(&self) -> &Recorder;
    fn metrics(&self) -> Option<&Metrics>;
}

/// Publishes an event about the pipeline itself.
pub(crate) async fn publish(
    ctx: &impl EventSink,
    pipeline: &OddsPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    send(ctx, pipeline, &event(type_, reason, action, note, None)).await;
}

/// Publishes a Normal event about the pipeline that names one of its children as the related
/// object. Events fold into a series by reason, action and related object, not by note: the
/// related object keeps the changes of each child a series of their own.
pub(crate) async fn publish_about_child(
    ctx: &impl EventSink,
    pipeline: &OddsPipeline,
    reason: &str,
    action: &str,
    note: String,
    child: ObjectReference,
) {
    let event = event(EventType::Normal, reason, action, note, Some(child));
    send(ctx, pipeline, &event).await;
}

fn event(
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    }
}

/// Publishes `event` about `pipeline`; a failure is logged, never fails the reconcile. A
/// note longer than the API server accepts is truncated ([`fit_note`]).
pub(crate) async fn send(ctx: &impl EventSink, pipeline: &OddsPipeline, event: &Event) {
    let fitted;
    let event = match event.note.as_deref().map(fit_note) {
        Some(std::borrow::Cow::Owned(note)) => {
            fitted = self::event(
                event.type_,
                &event.reason,
                &event.action,
                note,
                event.secondary.clone(),
            );
            &fitted
        }
        _ => event,
    };
    if let Err(error) = ctx
        .recorder()
        .publish(event, &pipeline.object_ref(&()))
        .await
    {
        tracing::warn!(%error, reason = %event.reason, "cannot publish event");
        if let Some(metrics) = ctx.metrics() {
            metrics.api_error("create", &error);
        }
    }
}

/// The most an event's `note` may hold, in bytes (the API server refuses longer ones).
pub const EVENT_NOTE_LIMIT: usize = 1024;
/// What ends a note that [`fit_note`] shortened.
pub const TRUNCATED_MARKER: &str = "… (truncated)";

/// `note` as it fits in an event: unchanged when it is at most [`EVENT_NOTE_LIMIT`] bytes,
/// otherwise cut at a character boundary and ended with [`TRUNCATED_MARKER`], within the
/// limit. (The full message stays in the status condition, which has room for it.)
pub fn fit_note(note: &str) -> std::borrow::Cow<'_, str> {
    if note.len() <= EVENT_NOTE_LIMIT {
        return std::borrow::Cow::Borrowed(note);
    }
    let mut end = EVENT_NOTE_LIMIT - TRUNCATED_MARKER.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{TRUNCATED_MARKER}", &note[..end]))
}
