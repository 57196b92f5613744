//! The task manager: which task lives where, and what a new assignment does to each (Kafka
//! Streams' `TaskManager.handleAssignment`).
//!
//! A partition's task is in exactly one place: on the stream thread (`Running`, or `Suspended`
//! after a revoke or a fence) or on the state updater (restoring, or a standby). The manager
//! keeps that map and turns an assignment into moves:
//!
//! | held as                | assigned active            | assigned standby        | not assigned |
//! |------------------------|----------------------------|-------------------------|--------------|
//! | running                | keep running               | recycle → updater       | close        |
//! | suspended              | resume → updater (catch up) | recycle → updater       | close        |
//! | on the updater         | `SetRole` active (promote) | `SetRole` standby       | `Close`      |
//! | nowhere                | `Create` active            | `Create` standby        | —            |
//!
//! A task the updater hands back (`Restored`) is checked against the assignment of that moment:
//! it may have changed while the task was in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use super::local::LocalStores;
use super::state_updater::UpdaterCommand;
use super::status::SharedStatus;
use super::task::{Task, TaskError, TaskState};
use super::{lock, SharedHeldTasks};

/// Owns the stream thread's tasks and knows where every other task is.
pub struct TaskManager {
    /// Tasks on the stream thread: `Running` or `Suspended`.
    pub tasks: BTreeMap<i32, Task>,
    /// Partitions whose task the state updater holds (or is handing back).
    in_updater: BTreeSet<i32>,
    active: BTreeSet<i32>,
    standby: BTreeSet<i32>,
    updater: Sender<UpdaterCommand>,
    local: Arc<LocalStores>,
    status: Arc<SharedStatus>,
    held: SharedHeldTasks,
}

/// What a change did to the stream thread's source assignment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SourceChanges {
    /// Partitions that stopped running (unassign them from the source consumer).
    pub stopped: Vec<i32>,
}

impl TaskManager {
    pub fn new(
        updater: Sender<UpdaterCommand>,
        local: Arc<LocalStores>,
        status: Arc<SharedStatus>,
        held: SharedHeldTasks,
    ) -> Self {
        Self {
            tasks: BTreeMap::new(),
            in_updater: BTreeSet::new(),
            active: BTreeSet::new(),
            standby: BTreeSet::new(),
            updater,
            local,
            status,
            held,
        }
    }

    /// Bring every task in line with a new assignment (see the module table). Running tasks
    /// that leave must have been committed by the caller.
    pub fn handle_assignment(
        &mut self,
        active: &[i32],
        standby: &[i32],
    ) -> Result<SourceChanges, TaskError> {
        self.active = active.iter().copied().collect();
        self.standby = standby
            .iter()
            .copied()
            .filter(|p| !self.active.contains(p))
            .collect();
        let mut changes = SourceChanges::default();
        for (p, mut task) in std::mem::take(&mut self.tasks) {
            let running = task.state() == TaskState::Running;
            if running && self.active.contains(&p) {
                self.tasks.insert(p, task);
                continue;
            }
            if running {
                task.transition(TaskState::Suspended)?;
                changes.stopped.push(p);
            }
            if self.active.contains(&p) || self.standby.contains(&p) {
                self.hand_to_updater(task, self.active.contains(&p));
            } else {
                self.close(task)?;
            }
        }
        for p in self.in_updater.clone() {
            let cmd = if self.active.contains(&p) {
                UpdaterCommand::SetRole {
                    partition: p,
                    active: true,
                }
            } else if self.standby.contains(&p) {
                UpdaterCommand::SetRole {
                    partition: p,
                    active: false,
                }
            } else {
                self.in_updater.remove(&p);
                UpdaterCommand::Close { partition: p }
            };
            self.send(cmd);
        }
        let wanted: Vec<(i32, bool)> = self
            .active
            .iter()
            .map(|p| (*p, true))
            .chain(self.standby.iter().map(|p| (*p, false)))
            .collect();
        for (p, active) in wanted {
            if !self.tasks.contains_key(&p) && self.in_updater.insert(p) {
                self.send(UpdaterCommand::Create {
                    partition: p,
                    active,
                });
            }
        }
        let mut held = lock(&self.held);
        held.active = self.active.iter().copied().collect();
        held.standby = self.standby.iter().copied().collect();
        held.positions
            .retain(|p, _| self.active.contains(p) || self.standby.contains(p));
        Ok(changes)
    }

    /// The updater restored `task`: run it if it is (still) assigned active. Returns the
    /// partition when it now runs (assign it to the source consumer).
    pub fn on_restored(&mut self, mut task: Task) -> Result<Option<i32>, TaskError> {
        let p = task.partition;
        self.in_updater.remove(&p);
        if self.active.contains(&p) {
            task.transition(TaskState::Running)?;
            self.local.insert(p, task.local_partition());
            self.status.task_state(p, TaskState::Running.name());
            lock(&self.held)
                .positions
                .insert(p, task.changelog_position());
            self.tasks.insert(p, task);
            return Ok(Some(p));
        }
        if self.standby.contains(&p) {
            self.hand_to_updater(task, false);
        } else {
            self.close(task)?;
        }
        Ok(None)
    }

    /// Stop processing: every running task becomes `Suspended` (committed state only; its
    /// copy stays queryable as a standby). Returns the partitions to take off the source.
    pub fn suspend_all(&mut self) -> Result<SourceChanges, TaskError> {
        let mut changes = SourceChanges::default();
        for (p, t) in self.tasks.iter_mut() {
            if t.state() == TaskState::Running {
                t.transition(TaskState::Suspended)?;
                self.local.insert(*p, t.local_partition());
                self.status.task_state(*p, TaskState::Suspended.name());
                changes.stopped.push(*p);
            }
        }
        Ok(changes)
    }

    /// The current assignment: (actives, standbys).
    pub fn assignment(&self) -> (Vec<i32>, Vec<i32>) {
        (
            self.active.iter().copied().collect(),
            self.standby.iter().copied().collect(),
        )
    }

    /// Whether every partition assigned active is running here.
    pub fn all_actives_running(&self) -> bool {
        self.active.iter().all(|p| {
            self.tasks
                .get(p)
                .is_some_and(|t| t.state() == TaskState::Running)
        })
    }

    /// Partitions running now.
    pub fn running(&self) -> impl Iterator<Item = i32> + '_ {
        self.tasks
            .iter()
            .filter(|(_, t)| t.state() == TaskState::Running)
            .map(|(p, _)| *p)
    }

    /// Publish the running tasks' changelog positions for the next join.
    pub fn publish_positions(&self) {
        let mut held = lock(&self.held);
        for (p, t) in &self.tasks {
            held.positions.insert(*p, t.changelog_position());
        }
    }

    /// Close every task on the stream thread and stop the updater (which closes its own).
    pub fn shutdown(&mut self) -> Result<(), TaskError> {
        for (_, task) in std::mem::take(&mut self.tasks) {
            self.close(task)?;
        }
        self.send(UpdaterCommand::Shutdown);
        Ok(())
    }

    fn hand_to_updater(&mut self, task: Task, active: bool) {
        self.in_updater.insert(task.partition);
        self.send(UpdaterCommand::Adopt {
            task: Box::new(task),
            active,
        });
    }

    fn close(&mut self, mut task: Task) -> Result<(), TaskError> {
        let p = task.partition;
        self.local.remove(p);
        self.status.task_gone(p);
        task.checkpoint()?;
        task.transition(TaskState::Closed)?;
        tracing::info!(partition = p, "closed task");
        Ok(())
    }

    fn send(&self, cmd: UpdaterCommand) {
        // The updater only stops after Shutdown, or with an error the stream thread learns of
        // from its event channel; a command it can no longer take has nothing left to do.
        let _ = self.updater.send(cmd);
    }
}
