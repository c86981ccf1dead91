//! Invalidation events shared between instances through Redis pub/sub.

/// An invalidation made by another instance, received through Redis pub/sub and already applied
/// to this instance's memory tier when it is observed (see
/// [`TieredCache::invalidation_events`](crate::TieredCache::invalidation_events)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key.
    Key(String),
    /// Every key starting with the prefix.
    Prefix(String),
    /// Every entry with one of the tags, filled before the shared tier handed out
    /// `generation` (its counter of invalidations, the same for every instance).
    Tags {
        /// The tags.
        tags: Vec<String>,
        /// The invalidation's generation: shared entries filled under an older one are gone.
        generation: u64,
    },
    /// Everything.
    Flush,
    /// Not from another instance: the subscription reconnected after it was lost (or after a
    /// start whose first connection attempts failed), and since events may have been missed
    /// meanwhile, this instance dropped everything from its memory tier. The first connection
    /// of a start that met no error is not reported: nothing can have been missed.
    Resubscribed,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Invalidation {
    /// `{instance}\n{kind}\n{payload}`; keys and prefixes may contain anything after the second
    /// newline, tags are one per line (header values cannot contain newlines).
    pub(crate) fn encode(&self, instance: &str) -> String {
        match self {
            Self::Key(key) => format!("{instance}\nk\n{key}"),
            Self::Prefix(prefix) => format!("{instance}\np\n{prefix}"),
            Self::Tags { tags, generation } => {
                format!("{instance}\nt\n{generation}\n{}", tags.join("\n"))
            }
            Self::Flush | Self::Resubscribed => format!("{instance}\nf\n"),
        }
    }

    /// The event and the instance that sent it; `None` for anything malformed.
    pub(crate) fn decode(message: &str) -> Option<(&str, Self)> {
        let (instance, rest) = message.split_once('\n')?;
        let (kind, payload) = rest.split_once('\n')?;
        let event = match kind {
            "k" => Self::Key(payload.to_owned()),
            "p" => Self::Prefix(payload.to_owned()),
            "t" => {
                let mut lines = payload.split('\n');
                let generation = lines.next()?.parse().ok()?;
                let tags = lines
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect();
                Self::Tags { tags, generation }
            }
            "f" => Self::Flush,
            _ => return None,
        };
        Some((instance, event))
    }
}

/// Receives other instances' invalidations, and [`Invalidation::Resubscribed`] when the
/// subscription (re)connected (events may have been missed meanwhile).
pub(crate) type EventSink = std::sync::Arc<dyn Fn(Invalidation) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_ignored() {
        for event in [
            Invalidation::Key("http://h/a\u{1f}x-tenant=1\nodd".into()),
            Invalidation::Prefix("http://h/".into()),
            Invalidation::Tags {
                tags: vec!["a".into(), "b c".into()],
                generation: 42,
            },
            Invalidation::Flush,
        ] {
            let encoded = event.encode("i1");
            assert_eq!(Invalidation::decode(&encoded), Some(("i1", event)));
        }
        for garbage in ["", "x", "i\nz\n", "i\nt\nnot-a-number\na"] {
            assert_eq!(Invalidation::decode(garbage), None, "{garbage:?}");
        }
    }
}
