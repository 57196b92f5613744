//! The processing runtime of one instance.
//!
//! Entry point: [`Instance::run`]. An instance owns one [`task::Task`] per partition it
//! processes; the [`stream_thread`] polls the source, runs each record through its task's
//! topology, writes stores and changelogs, and commits. Before a task runs, [`restore`] brings its
//! stores up to the changelog's end. Queries read stores through [`local::LocalStores`].

pub mod instance;
pub mod local;
pub mod restore;
pub mod stream_thread;
pub mod task;

pub use instance::{Instance, RunError};
pub use local::{LocalPartition, LocalStores, Role};
