//! Server-sent events from a streaming request: each route says how the service's events
//! become JSON chunks ([`Chunks`]); this sends them as `data: {chunk}` lines as the decoder
//! produces them, then `data: [DONE]`. A client that goes away drops the stream, which cancels
//! its rows (they leave the running batch at the next decode step).
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;

use crate::service::stream::{PredictStream, StreamEvent};
use crate::service::Error;

/// One server-sent event as the OpenAPI document describes a `text/event-stream` response
/// (what schema-driven clients and fuzzers check each event against): `data` is one JSON chunk,
/// or `[DONE]` last.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// One JSON chunk (the route's own shape), or `[DONE]`.
    data: String,
    /// The event type (`message`, SSE's default, when absent).
    event: Option<String>,
    /// The event id (promptd sends none).
    id: Option<String>,
    /// A reconnection delay in ms (promptd sends none).
    retry: Option<u64>,
}

/// How a route's stream looks on the wire.
pub trait Chunks: Send + 'static {
    /// The chunks one event becomes (possibly none).
    fn event(&mut self, event: StreamEvent) -> Vec<Value>;
    /// The chunks after the last event (a usage summary, say).
    fn end(&mut self) -> Vec<Value> {
        Vec::new()
    }
    /// The chunk for a failure mid-stream; nothing follows it but `[DONE]`.
    fn error(&mut self, error: Error) -> Value;
}

/// The response that streams `rows` as `chunks` says.
pub fn respond(rows: PredictStream, chunks: impl Chunks) -> Response {
    enum Phase {
        Events,
        Done,
        Over,
    }
    let events = stream::unfold(
        (rows, chunks, Phase::Events),
        |(mut rows, mut chunks, phase)| async move {
            let batch = match phase {
                Phase::Over => return None,
                Phase::Done => {
                    let done = vec![Event::default().data("[DONE]")];
                    return Some((done, (rows, chunks, Phase::Over)));
                }
                Phase::Events => match rows.next().await {
                    Some(Ok(event)) => (chunks.event(event), Phase::Events),
                    Some(Err(e)) => (vec![chunks.error(e)], Phase::Done),
                    None => (chunks.end(), Phase::Done),
                },
            };
            let (values, phase) = batch;
            let events = values.iter().map(|v| Event::default().data(v.to_string()));
            Some((events.collect(), (rows, chunks, phase)))
        },
    );
    let flat = futures_util::StreamExt::flat_map(events, |batch: Vec<Event>| {
        stream::iter(batch.into_iter().map(Ok::<_, Infallible>))
    });
    Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The response that streams chunks known at once (an answer that came whole), then `[DONE]`.
pub fn respond_values(values: Vec<Value>) -> Response {
    let events = values
        .iter()
        .map(|v| Event::default().data(v.to_string()))
        .chain(std::iter::once(Event::default().data("[DONE]")))
        .map(Ok::<_, Infallible>)
        .collect::<Vec<_>>();
    Sse::new(stream::iter(events)).into_response()
}
