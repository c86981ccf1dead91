//! Reading a request body into memory, up to a limit.

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

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
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn a_body_is_read_whole_up_to_the_limit() {
        let body = || Full::new(Bytes::from_static(b"abcd"));
        assert_eq!(read_body(body(), 4).await.unwrap(), "abcd");
        assert!(matches!(read_body(body(), 3).await, Err(Unread::TooLarge)));
    }

    #[tokio::test]
    async fn a_failing_body_gives_its_own_error_back() {
        let failing = StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("connection reset"),
        ]));
        assert!(matches!(
            read_body(failing, 10).await,
            Err(Unread::Failed("connection reset"))
        ));
    }
}
