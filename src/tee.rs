//! The copy a streaming fill keeps of a body it passes on: every chunk the client is sent is
//! also kept (shared, not copied), up to a limit, and handed over when the body ends.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;

/// What a streaming fill does with the body once it has passed through.
pub(crate) trait Completion: Send + Sync {
    /// `Some((body, trailers))` when the whole body passed through within the limit; `None`
    /// when it did not (larger than the limit, or it failed). Dropping a completion without
    /// calling this means the body was not read to its end: the client went away. Returns
    /// whether the body was stored.
    fn complete(self: Box<Self>, body: Option<(Bytes, HeaderMap)>) -> bool;
}

/// The chunks kept so far, and what to do with them at the end.
pub(crate) struct Tee {
    chunks: Vec<Bytes>,
    len: u64,
    limit: u64,
    trailers: HeaderMap,
    completion: Option<Box<dyn Completion>>,
}

impl Tee {
    pub(crate) fn new(limit: u64, completion: Box<dyn Completion>) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            limit,
            trailers: HeaderMap::new(),
            completion: Some(completion),
        }
    }

    /// Keeps what `frame` carries: a data chunk, or trailers.
    pub(crate) fn observe(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.keep(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            self.keep_trailers(trailers);
        }
    }

    /// Whether the copy was handed over or given up: nothing more to keep.
    pub(crate) fn is_done(&self) -> bool {
        self.completion.is_none()
    }

    /// Keeps `chunk` (a cheap clone); past the limit, gives up keeping anything.
    fn keep(&mut self, chunk: &Bytes) {
        if self.completion.is_none() || chunk.is_empty() {
            return;
        }
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            self.give_up();
            return;
        }
        self.chunks.push(chunk.clone());
    }

    fn keep_trailers(&mut self, trailers: &HeaderMap) {
        if self.completion.is_some() {
            self.trailers.extend(trailers.clone());
        }
    }

    /// The body ended: hands the whole of it over; whether it was stored (`false` also when
    /// it was handed over, or given up, before).
    pub(crate) fn finish(&mut self) -> bool {
        let Some(completion) = self.completion.take() else {
            return false;
        };
        let chunks = std::mem::take(&mut self.chunks);
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
                for chunk in chunks {
                    whole.extend_from_slice(&chunk);
                }
                whole.freeze()
            }
        };
        completion.complete(Some((body, std::mem::take(&mut self.trailers))))
    }

    /// The body failed or outgrew the limit: nothing to hand over.
    pub(crate) fn give_up(&mut self) {
        self.chunks.clear();
        if let Some(completion) = self.completion.take() {
            completion.complete(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Outcome = Arc<Mutex<Option<Option<Bytes>>>>;

    struct Record(Outcome);

    impl Completion for Record {
        fn complete(self: Box<Self>, body: Option<(Bytes, HeaderMap)>) -> bool {
            let stored = body.is_some();
            *self.0.lock().unwrap() = Some(body.map(|(body, _)| body));
            stored
        }
    }

    fn tee(limit: u64) -> (Tee, Outcome) {
        let outcome = Outcome::default();
        (Tee::new(limit, Box::new(Record(outcome.clone()))), outcome)
    }

    #[test]
    fn the_whole_body_is_handed_over_once() {
        let (mut tee, outcome) = tee(10);
        tee.observe(&Frame::data(Bytes::from_static(b"abc")));
        tee.observe(&Frame::data(Bytes::from_static(b"def")));
        assert!(tee.finish());
        assert!(tee.is_done());
        assert!(!tee.finish());
        assert_eq!(
            *outcome.lock().unwrap(),
            Some(Some(Bytes::from_static(b"abcdef")))
        );
    }

    #[test]
    fn a_body_over_the_limit_is_not_kept() {
        let (mut tee, outcome) = tee(4);
        tee.observe(&Frame::data(Bytes::from_static(b"abc")));
        tee.observe(&Frame::data(Bytes::from_static(b"def")));
        assert_eq!(*outcome.lock().unwrap(), Some(None));
        assert!(!tee.finish());
        assert_eq!(*outcome.lock().unwrap(), Some(None), "given up for good");
    }

    #[test]
    fn a_dropped_tee_completes_nothing() {
        let (tee, outcome) = tee(4);
        drop(tee);
        assert_eq!(*outcome.lock().unwrap(), None);
    }
}
