//! Command-and-control frames between a Tidegate gateway and its control plane.
//!
//! A [`Frame`] is one length-delimited, versioned unit on the wire: a sequence number and one
//! [`Message`]. [`FrameCodec`] turns frames into bytes and back, enforcing a hard maximum frame
//! size *before* it allocates anything, and never panicking whatever the bytes.
//!
//! ```text
//! +----------------+-------------+-------------+-------------------------------+
//! | length: u32 BE | format: u8  | seq: u64 BE | body: postcard(Message)       |
//! +----------------+-------------+-------------+-------------------------------+
//!   length counts every byte after itself
//! ```
//!
//! # No row data
//!
//! The message vocabulary is deliberately narrow: schemas, counts, positions, settings and error
//! texts. No variant has a field for row values or opaque byte payloads, so the control plane
//! cannot receive row data through this protocol even by mistake. Error texts are produced by
//! Tidegate's own error types, which name objects (tables, columns, connections) and never quote
//! values.
//!
//! This crate knows nothing of cryptography, Arrow or databases; sealing frames is the job of
//! `tidegate-channel`, composed with this crate by `tidegate-link`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod codec;
mod message;
mod secret;
mod settings;

// The public interface.
pub use codec::{
    DEFAULT_MAX_FRAME_LEN, Error, FORMAT_VERSION, Frame, FrameBuf, FrameCodec, HARD_MAX_FRAME_LEN,
    HEADER_LEN,
};
pub use message::{
    ColumnDescription, Command, CommandId, CommandOutcome, CommandResult, ConnectionSpec,
    ErrorCode, ErrorReport, FailedTable, FailedTablesReport, Goodbye, Heartbeat, Hello, Message,
    MetricsReport, ProgressReport, ProtocolVersion, Refusal, RefusalReason, ReplicationPhase,
    ReplicationReport, SlotReport, TableDescription, TableProgress, TableSelection, TableState,
    TaskKind, TaskSpec, TaskState, TaskStatus, Welcome,
};
pub use secret::{SecretMap, SecretString};
pub use settings::storage_prefix_problem;

/// The protocol versions this build of Tidegate speaks, oldest first.
///
/// A peer negotiates the highest version both sides support; a gateway whose range does not
/// overlap the control plane's is refused with [`RefusalReason::UnsupportedVersion`].
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<ProtocolVersion> =
    ProtocolVersion(1)..=ProtocolVersion(3);

/// Picks the highest protocol version in both `ours` and the peer's `[min, max]` range.
pub fn negotiate(
    ours: &std::ops::RangeInclusive<ProtocolVersion>,
    peer_min: ProtocolVersion,
    peer_max: ProtocolVersion,
) -> Option<ProtocolVersion> {
    let high = (*ours.end()).min(peer_max);
    let low = (*ours.start()).max(peer_min);
    (low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        let ours = ProtocolVersion(2)..=ProtocolVersion(4);
        let cases = [
            ((1, 1), None),
            ((1, 2), Some(2)),
            ((1, 9), Some(4)),
            ((3, 3), Some(3)),
            ((5, 9), None),
            ((4, 2), None),
        ];
        for ((min, max), want) in cases {
            let got = negotiate(&ours, ProtocolVersion(min), ProtocolVersion(max));
            assert_eq!(got, want.map(ProtocolVersion), "peer range {min}..={max}");
        }
    }
}
