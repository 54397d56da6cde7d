//! Request bodies with a size limit that the client is told about, and answers written as JSON
//! text.
//!
//! axum's own limit answers 413 without reading the rest of the body, and the connection is
//! then closed with the client's data unread in the socket: the kernel resets it, and a client
//! that is still sending sees a reset connection instead of the 413. Here the rest of the body
//! is read and dropped in the background, within bounds, so the 413 reaches the client and the
//! connection carries its next request.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::LengthLimitError;

/// How long the rest of an oversized body is read for before the connection is given up.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// How much of it is read, in multiples of the limit: an honest client that sent somewhat too
/// much is answered properly, one that streams without end is cut off.
const DRAIN_FACTOR: usize = 4;

/// A 200 carrying `json`, JSON text the handler wrote itself.
pub fn json_text(json: Vec<u8>) -> Response {
    let content_type = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    (content_type, json).into_response()
}

/// A whole request body of at most `MAX` bytes; a larger one is answered with 413.
pub struct Limited<const MAX: usize>(pub Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for Limited<MAX> {
    type Rejection = Response;

    async fn from_request(request: Request, _: &S) -> Result<Self, Response> {
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = request.into_body();
        if announced.is_some_and(|length| length > MAX as u64) {
            return Err(too_large(body, MAX));
        }
        // Collected frames are copied together only when there is more than one.
        match http_body_util::Limited::new(&mut body, MAX).collect().await {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large(body, MAX)),
            Err(e) => Err((
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
                .into_response()),
        }
    }
}

fn too_large(body: Body, max: usize) -> Response {
    tokio::spawn(drain(body, max.saturating_mul(DRAIN_FACTOR)));
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max} bytes"),
    )
        .into_response()
}

async fn drain(mut body: Body, most: usize) {
    let read_and_drop = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > most {
                return;
            }
        }
    };
    // Dropping the body early closes the connection, which is all that is left to do.
    let _ = tokio::time::timeout(DRAIN_TIME, read_and_drop).await;
}
