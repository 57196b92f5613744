//! The instance's place in the cluster: membership of the consumer group, or standalone mode,
//! and what the rest of the cluster looks like (which instance holds which partition).
//!
//! Entry points: [`group::GroupLoop::run`] (a tokio task) and [`standalone::Standalone::run`].
//! Both drive the engine with [`crate::engine::EngineCommand`]s and keep the
//! [`routing::RoutingTable`] the query layer forwards by. This layer reads the engine's state
//! (what it holds, how caught up each copy is); the engine never imports it.
//!
//! # Layout
//! - [`group`]: join → hand the assignment to the engine → heartbeat (and serve at-least-once
//!   offset commits) → revoke and rejoin.
//! - [`standalone`]: one instance owning every partition, no group protocol.
//! - [`routing`]: the partition map of the current generation.
//! - [`probe`]: the leader's probes of the other members' query endpoints; members whose process
//!   is gone are removed from the group at once instead of after their session timeout.
//! - [`identity`]: the instance's stable process id and the store positions it starts with.
//! - [`lag`]: the group's input lag per partition, read from the broker.
//! - [`metrics`]: the group as this instance sees it, for `/metrics`.

pub mod group;
pub mod identity;
pub mod lag;
pub mod metrics;
pub mod probe;
pub mod routing;
pub mod standalone;
