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

/// Where a task is when an assignment arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the stream thread, processing.
    Running,
    /// On the stream thread, not processing (revoked or fenced; committed state only).
    Suspended,
    /// On the state updater (restoring, or a standby).
    Updater,
}

/// One step of bringing the tasks in line with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    KeepRunning(i32),
    /// From the stream thread to the updater: catch up (`active`) or follow as a standby.
    HandOver {
        partition: i32,
        active: bool,
    },
    /// Close a task of the stream thread.
    Close(i32),
    /// Tell the updater the role of a task it holds.
    SetRole {
        partition: i32,
        active: bool,
    },
    CloseInUpdater(i32),
    /// A task nobody holds: the updater opens it.
    Create {
        partition: i32,
        active: bool,
    },
}

/// The module table as a pure function: what to do with every `held` task and every assigned
/// partition. `standby` must not contain `active` partitions.
///
/// Postconditions (property-tested): every assigned partition gets exactly one move that leaves
/// it held with its assigned role, every unassigned held task exactly one close, and a partition
/// already held is never created again.
pub fn plan(
    held: &BTreeMap<i32, Place>,
    active: &BTreeSet<i32>,
    standby: &BTreeSet<i32>,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for (&p, &place) in held {
        let role = if active.contains(&p) {
            Some(true)
        } else if standby.contains(&p) {
            Some(false)
        } else {
            None
        };
        moves.push(match (place, role) {
            (Place::Running, Some(true)) => Move::KeepRunning(p),
            (Place::Running | Place::Suspended, Some(active)) => Move::HandOver {
                partition: p,
                active,
            },
            (Place::Running | Place::Suspended, None) => Move::Close(p),
            (Place::Updater, Some(active)) => Move::SetRole {
                partition: p,
                active,
            },
            (Place::Updater, None) => Move::CloseInUpdater(p),
        });
    }
    for (&p, is_active) in active
        .iter()
        .map(|p| (p, true))
        .chain(standby.iter().map(|p| (p, false)))
    {
        if !held.contains_key(&p) {
            moves.push(Move::Create {
                partition: p,
                active: is_active,
            });
        }
    }
    moves
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

    /// Bring every task in line with a new assignment (see the module table and [`plan`]).
    /// Running tasks that leave must have been committed by the caller.
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
        let held: BTreeMap<i32, Place> = self
            .tasks
            .iter()
            .map(|(p, t)| {
                let place = if t.state() == TaskState::Running {
                    Place::Running
                } else {
                    Place::Suspended
                };
                (*p, place)
            })
            .chain(self.in_updater.iter().map(|p| (*p, Place::Updater)))
            .collect();
        let mut changes = SourceChanges::default();
        for m in plan(&held, &self.active, &self.standby) {
            match m {
                Move::KeepRunning(_) => {}
                Move::HandOver { partition, active } => {
                    if let Some(mut task) = self.tasks.remove(&partition) {
                        if task.state() == TaskState::Running {
                            task.transition(TaskState::Suspended)?;
                            Self::stopped(&self.local, &task);
                            changes.stopped.push(partition);
                        }
                        self.hand_to_updater(task, active);
                    }
                }
                Move::Close(p) => {
                    if let Some(mut task) = self.tasks.remove(&p) {
                        if task.state() == TaskState::Running {
                            task.transition(TaskState::Suspended)?;
                            changes.stopped.push(p);
                        }
                        self.close(task)?;
                    }
                }
                Move::SetRole { partition, active } => {
                    self.send(UpdaterCommand::SetRole { partition, active })
                }
                Move::CloseInUpdater(p) => {
                    self.in_updater.remove(&p);
                    self.send(UpdaterCommand::Close { partition: p });
                }
                Move::Create { partition, active } => {
                    self.in_updater.insert(partition);
                    self.send(UpdaterCommand::Create { partition, active });
                }
            }
        }
        let mut held = lock(&self.held);
        held.active = self.active.iter().copied().collect();
        held.standby = self.standby.iter().copied().collect();
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
                Self::stopped(&self.local, t);
                self.status.task_state(*p, TaskState::Suspended.name());
                changes.stopped.push(*p);
            }
        }
        Ok(changes)
    }

    /// A task just stopped running: queries see its copy as a standby at once (not when the
    /// updater takes it), and its lag as unknown: the source lag it had says nothing about how
    /// far the next active gets ahead of it.
    fn stopped(local: &LocalStores, task: &Task) {
        let copy = task.local_partition();
        copy.metrics
            .lag
            .store(-1, std::sync::atomic::Ordering::Relaxed);
        local.insert(task.partition, copy);
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
        // The files stay (and say how far they are) for when the partition comes back.
        lock(&self.held)
            .positions
            .insert(p, task.changelog_position());
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::{plan, Move, Place};

    fn place() -> impl Strategy<Value = Place> {
        prop_oneof![
            Just(Place::Running),
            Just(Place::Suspended),
            Just(Place::Updater)
        ]
    }

    proptest! {
        #[test]
        fn every_partition_ends_held_once_with_its_assigned_role(
            held in proptest::collection::btree_map(0i32..16, place(), 0..16),
            roles in proptest::collection::btree_map(0i32..16, any::<bool>(), 0..16),
        ) {
            let active: BTreeSet<i32> = roles.iter().filter(|(_, a)| **a).map(|(p, _)| *p).collect();
            let standby: BTreeSet<i32> = roles.iter().filter(|(_, a)| !**a).map(|(p, _)| *p).collect();
            let moves = plan(&held, &active, &standby);
            // Where each partition ends and as what (true: active), from the moves alone.
            let mut ends: BTreeMap<i32, Option<bool>> = BTreeMap::new();
            for m in &moves {
                let (p, end) = match *m {
                    Move::KeepRunning(p) => (p, Some(true)),
                    Move::HandOver { partition, active }
                    | Move::SetRole { partition, active }
                    | Move::Create { partition, active } => (partition, Some(active)),
                    Move::Close(p) | Move::CloseInUpdater(p) => (p, None),
                };
                prop_assert!(ends.insert(p, end).is_none(), "two moves for {}", p);
                if let Move::Create { partition, .. } = m {
                    prop_assert!(!held.contains_key(partition), "created {} twice", partition);
                }
                if let Move::KeepRunning(p) = m {
                    prop_assert_eq!(held.get(p), Some(&Place::Running));
                }
            }
            for p in held.keys().chain(roles.keys()) {
                let want = roles.get(p).copied();
                prop_assert_eq!(ends.get(p).copied(), Some(want), "partition {}", p);
            }
        }
    }

    #[test]
    fn a_running_active_keeps_running_and_a_suspended_one_catches_up_first() {
        let held = BTreeMap::from([
            (0, Place::Running),
            (1, Place::Suspended),
            (2, Place::Updater),
        ]);
        let active = BTreeSet::from([0, 1]);
        let moves = plan(&held, &active, &BTreeSet::from([3]));
        assert_eq!(
            moves,
            [
                Move::KeepRunning(0),
                Move::HandOver {
                    partition: 1,
                    active: true
                },
                Move::CloseInUpdater(2),
                Move::Create {
                    partition: 3,
                    active: false
                },
            ]
        );
    }
}
