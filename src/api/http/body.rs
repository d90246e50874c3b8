//! Request bodies under a byte limit, refused the way a client can read.
//!
//! A declared `Content-Length` over the limit is refused at once, before a byte of the body is
//! read. A body that grows past the limit while it streams (chunked, no length) is refused
//! too, and in both cases the rest of what the client is still sending is read and dropped,
//! bounded in bytes and time, so the client sees the 413 instead of a reset mid-upload.
//!
//! The refusal travels to the route as a [`Refused`] extension with an empty body, so the
//! route answers (and counts) the 413 like any other bad request; the response then closes
//! the connection.
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use super::error::ApiError;

/// Most bytes read and dropped after a 413, so a client still sending sees the answer.
const DRAIN_BYTES: u64 = 64 << 20;
/// Longest the rest of a refused body is read for.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A route's body limit: `(limit in bytes, the flag that sets it)`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Largest body accepted, in bytes.
    pub max: usize,
    /// The flag that sets it, named in the 413.
    pub flag: &'static str,
}

/// Why a body was refused; the routes' body extractors answer it as 413 ([`check`]).
#[derive(Debug, Clone)]
pub struct Refused(pub String);

/// The 413 for a request whose body the limit refused, if it was.
pub fn check<B>(req: &axum::http::Request<B>) -> Result<(), ApiError> {
    match req.extensions().get::<Refused>() {
        Some(Refused(why)) => Err(crate::service::Error::TooLarge(why.clone()).into()),
        None => Ok(()),
    }
}

/// Middleware: buffers the body under `limit`, or hands the route a [`Refused`] (see the
/// module docs).
pub async fn limit(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (mut parts, body) = req.into_parts();
    let refused = match declared {
        Some(declared) if declared > limit.max as u64 => {
            // Draining a body we would read for long anyway is not worth it: close instead.
            if declared - limit.max as u64 <= DRAIN_BYTES {
                drain(body);
            }
            Err(format!(
                "the body is {declared} bytes (Content-Length); the limit is {} ({})",
                limit.max, limit.flag
            ))
        }
        _ => read(body, limit).await,
    };
    let buf = match refused {
        Ok(buf) => buf,
        Err(why) => {
            parts.extensions.insert(Refused(why));
            let mut response = next.run(Request::from_parts(parts, Body::empty())).await;
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

/// The whole body, or why not (over the limit: the rest is drained).
async fn read(mut body: Body, limit: BodyLimit) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit.max {
            drain(body);
            return Err(format!(
                "the body is over {} bytes, the limit ({})",
                limit.max, limit.flag
            ));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// Reads and drops the rest of `body` in the background, bounded by [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`]; dropping it then lets the connection close.
fn drain(mut body: Body) {
    tokio::spawn(async move {
        let mut left = DRAIN_BYTES;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    match left.checked_sub(data.len() as u64) {
                        Some(rest) => left = rest,
                        None => break,
                    }
                }
            }
        })
        .await;
    });
}

/// A JSON body whose rejections are [`ApiError`]s, so malformed bodies get the same JSON
/// error shape as everything else (a body over the route's limit is a 413).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        check(&req)?;
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// A raw body (any content type); a body over the route's limit is a 413.
#[derive(Debug)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        check(&req)?;
        Ok(RawBody(axum::body::Bytes::from_request(req, state).await?))
    }
}
