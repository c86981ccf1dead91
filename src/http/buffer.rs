//! Reading a body into memory, up to a limit: a response's without losing what follows it, a
//! request's whole.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::BoxError;

/// A body read up to a limit.
pub(crate) enum Buffered<B> {
    /// The whole body (at most the limit) and its trailers.
    Complete { data: Bytes, trailers: HeaderMap },
    /// More than the limit: what was read, and the unread rest.
    TooLarge { prefix: Bytes, rest: B },
    /// The body failed after `prefix`.
    Failed { prefix: Bytes, error: BoxError },
}

/// Reads `body` until its end or until more than `limit` bytes arrived.
pub(crate) async fn buffer<B>(mut body: B, limit: u64) -> Buffered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut data = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Buffered::Failed {
                    prefix: data.freeze(),
                    error: error.into(),
                }
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() as u64 > limit {
                    return Buffered::TooLarge {
                        prefix: data.freeze(),
                        rest: body,
                    };
                }
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.extend(more);
                }
            }
        }
    }
    Buffered::Complete {
        data: data.freeze(),
        trailers,
    }
}

/// Why [`read_body`] has no body to give.
#[derive(Debug)]
pub(crate) enum Unread<E> {
    /// More than the limit arrived.
    TooLarge,
    /// The body failed.
    Failed(E),
}

/// The whole body, if it fits in `limit` bytes and reads without error.
pub(crate) async fn read_body<B: Body>(body: B, limit: u64) -> Result<Bytes, Unread<B::Error>> {
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(mut chunk) = frame.map_err(Unread::Failed)?.into_data() {
            if (data.len() + chunk.remaining()) as u64 > limit {
                return Err(Unread::TooLarge);
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                data.extend_from_slice(part);
                let read = part.len();
                chunk.advance(read);
            }
        }
    }
    Ok(data.freeze())
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        let Buffered::Complete { data, .. } =
            buffer(Full::new(Bytes::from_static(b"abc")), 3).await
        else {
            panic!("complete expected");
        };
        assert_eq!(data, "abc");
    }

    #[tokio::test]
    async fn reading_stops_just_past_the_limit() {
        let chunks = (0..10).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"0123456789")))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let Buffered::TooLarge { prefix, rest } = buffer(body, 25).await else {
            panic!("too large expected");
        };
        assert_eq!(prefix.len(), 30, "read one chunk past the limit, no more");
        assert_eq!(rest.collect().await.unwrap().to_bytes().len(), 70);
    }
}
