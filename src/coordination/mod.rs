//! Group coordination: who processes which partition, and where every partition can be queried.
//!
//! librdkafka has no custom assignor, so paystream speaks Kafka's classic group protocol itself
//! (as Kafka Streams does with its leader-side assignor) and uses rdkafka only for data, with
//! manual `assign()`.
//!
//! - [`membership`]: the group-membership client (FindCoordinator, JoinGroup, SyncGroup,
//!   Heartbeat, LeaveGroup, OffsetCommit/OffsetFetch over tokio with `kafka-protocol`).
//! - [`assignor`]: the pure assignment function (actives, standbys, warm-ups, partition map).
//! - [`protocol`]: paystream's versioned user data inside the consumer-protocol envelopes.
//! - [`leader`]: the leader-side adapter from JoinGroup members to [`assignor::assign`].
//! - [`eviction`]: pure: which members the leader removes before their session times out, from
//!   probes of their query endpoints.
//! - [`security`]: TLS and SASL settings of the broker connections, from librdkafka's property
//!   names; [`scram`] the pure SCRAM client; `transport` the TCP or TLS stream; `wire` the framed
//!   requests (and the SASL exchange) over it.

pub mod assignor;
mod error;
pub mod eviction;
pub mod leader;
pub mod membership;
pub mod protocol;
pub mod scram;
pub mod security;
mod transport;
mod wire;
