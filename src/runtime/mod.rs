//! The processing runtime of one instance.
//!
//! Entry point: [`Instance::run`]. The [`group`] loop keeps the instance in the consumer group and
//! hands each new assignment to the [`stream_thread`], which owns one [`task::Task`] per
//! partition it holds (active: source → topology → stores + changelogs; standby: changelog →
//! store), and commits. Before an active runs, [`restore`] brings its stores up to the
//! changelog's end. Queries read stores through [`local::LocalStores`].

pub mod group;
pub mod instance;
pub mod local;
pub mod restore;
pub mod store;
pub mod stream_thread;
pub mod task;

pub use instance::{Instance, RunError};
pub use local::{LocalPartition, LocalStores, Role};
