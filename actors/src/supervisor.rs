//! A restarting supervisor, because ractor's default stops the parent when any child exits.
//!
//! Each [`Supervisor`] starts its children in order and, when one exits unexpectedly, restarts it
//! after an exponential backoff. With [`Strategy::RestForOne`] the children started after it are
//! stopped and restarted too, since they hold references to it (a consumer holds its cache's
//! address). More than `max_restarts` restarts within `window` exhaust the supervisor: it either
//! escalates (fails, so its own supervisor handles it) or gives the child up and marks it failed,
//! leaving its siblings running. On a normal stop it stops its children in reverse order and
//! waits for each, so in-flight work finishes first.
//!
//! Every supervisor writes its children's state into a shared [`SupervisionTree`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;

/// The root of the supervision tree.
pub const ROOT: &str = "carrier";

/// Starts one child linked to `supervisor`; `siblings` are the children started before it.
pub type StartFn =
    Arc<dyn Fn(ActorCell, Siblings) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>> + Send + Sync>;

/// The running children started before the one being started, by name.
pub type Siblings = HashMap<String, ActorCell>;

/// How to start one child.
#[derive(Clone)]
pub struct ChildSpec {
    /// Its name within the supervisor, e.g. `cache`.
    pub name: String,
    /// How to start it.
    pub start: StartFn,
}

impl ChildSpec {
    /// A child started by `start`.
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell, Siblings) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ActorCell, ActorProcessingErr>> + Send + 'static,
    {
        ChildSpec { name: name.into(), start: Arc::new(move |sup, sib| Box::pin(start(sup, sib))) }
    }
}

/// Which children restart together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// What an exhausted supervisor does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenExhausted {
    /// Fail, handing the problem to its own supervisor.
    Escalate,
    /// Stop restarting that child, mark it failed, keep the others running.
    GiveUp,
}

/// How hard a supervisor tries.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Which children restart together.
    pub strategy: Strategy,
    /// Restarts allowed within `window`.
    pub max_restarts: usize,
    /// The window restarts are counted in.
    pub window: Duration,
    /// The first restart's delay; it doubles per consecutive failure.
    pub backoff_min: Duration,
    /// The longest delay.
    pub backoff_max: Duration,
    /// What happens past `max_restarts`.
    pub when_exhausted: WhenExhausted,
}

impl RestartPolicy {
    /// For a bounded context's actors: restart the rest, escalate after 5 restarts in 30 s.
    pub fn context() -> Self {
        RestartPolicy {
            strategy: Strategy::RestForOne,
            max_restarts: 5,
            window: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            when_exhausted: WhenExhausted::Escalate,
        }
    }

    /// For the system: restart a context on its own; give it up after 3 escalations in 60 s.
    pub fn system() -> Self {
        RestartPolicy {
            strategy: Strategy::OneForOne,
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            when_exhausted: WhenExhausted::GiveUp,
        }
    }

    fn backoff(&self, consecutive: u32) -> Duration {
        let factor = 2u32.saturating_pow(consecutive.min(16));
        self.backoff_min.saturating_mul(factor).min(self.backoff_max)
    }
}

/// A node's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Exited; a restart is scheduled.
    Restarting,
    /// Stopped on purpose.
    Stopped,
    /// Given up on after too many failures.
    Failed,
}

/// One actor's entry in the [`SupervisionTree`].
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Its state.
    pub state: NodeState,
    /// How often it was restarted.
    pub restarts: u32,
    /// The last failure's reason.
    pub last_failure: Option<String>,
    /// When it last failed.
    pub last_failure_at: Option<SystemTime>,
    /// When it last started.
    pub started_at: Option<SystemTime>,
}

/// The state of every supervised actor, by path (`carrier/baskets/cache`). Cheap to clone.
#[derive(Clone, Default)]
pub struct SupervisionTree {
    nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    /// The running actor at each path, for an operator's restart.
    cells: Arc<Mutex<BTreeMap<String, ActorCell>>>,
}

impl SupervisionTree {
    /// A copy of every node, by path.
    pub fn snapshot(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// One node.
    pub fn get(&self, path: &str) -> Option<NodeStatus> {
        self.nodes.lock().ok().and_then(|m| m.get(path).cloned())
    }

    /// Ends the actor at `path` so that its supervisor restarts it, as after a failure: `kill`
    /// ends it at once, as a crash would; otherwise it stops after its current message.
    pub fn restart(&self, path: &str, kill: bool) -> Result<(), RestartError> {
        let cell = self.cells.lock().ok().and_then(|m| m.get(path).cloned());
        let cell = cell.ok_or_else(|| RestartError::NoSuchActor { path: path.to_string() })?;
        if self.get(path).is_some_and(|n| n.state != NodeState::Running) {
            return Err(RestartError::NotRunning { path: path.to_string() });
        }
        if kill {
            cell.kill();
        } else {
            cell.stop(Some("restarted by the operator".into()));
        }
        Ok(())
    }

    fn register(&self, path: &str, cell: ActorCell) {
        if let Ok(mut cells) = self.cells.lock() {
            cells.insert(path.to_string(), cell);
        }
    }

    fn update(&self, path: &str, change: impl FnOnce(&mut NodeStatus)) {
        if let Ok(mut map) = self.nodes.lock() {
            let node = map.entry(path.to_string()).or_insert(NodeStatus {
                state: NodeState::Starting,
                restarts: 0,
                last_failure: None,
                last_failure_at: None,
                started_at: None,
            });
            change(node);
        }
    }
}

/// Why an operator's restart was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    /// No supervised actor has that path.
    #[error("no supervised actor at {path:?}")]
    NoSuchActor {
        /// The path asked for.
        path: String,
    },
    /// It is restarting or stopped already.
    #[error("{path} is not running")]
    NotRunning {
        /// Its path.
        path: String,
    },
}

/// What a supervisor is started with.
pub struct SupervisorArgs {
    /// Its path in the tree, e.g. `carrier/baskets`.
    pub path: String,
    /// Its children, in start order.
    pub children: Vec<ChildSpec>,
    /// How it restarts them.
    pub policy: RestartPolicy,
    /// Where it reports their state.
    pub tree: SupervisionTree,
}

/// Messages a supervisor sends itself.
pub enum SupervisorMsg {
    /// Restart the child at `index` (and, rest-for-one, those after it).
    Restart {
        /// The child's position.
        index: usize,
    },
}

/// The supervisor actor.
pub struct Supervisor;

struct Slot {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started: Option<Instant>,
    consecutive_failures: u32,
    given_up: bool,
}

/// A supervisor's state.
pub struct SupervisorState {
    path: String,
    slots: Vec<Slot>,
    policy: RestartPolicy,
    tree: SupervisionTree,
    recent_restarts: VecDeque<Instant>,
    /// The earliest child with a restart scheduled: exits until then belong to that incident.
    pending_restart: Option<usize>,
}

impl SupervisorState {
    fn child_path(&self, index: usize) -> String {
        format!("{}/{}", self.path, self.slots[index].spec.name)
    }

    fn siblings(&self) -> Siblings {
        self.slots.iter().filter_map(|s| s.cell.clone().map(|c| (s.spec.name.clone(), c))).collect()
    }

    async fn start_child(&mut self, myself: &ActorCell, index: usize) -> Result<(), ActorProcessingErr> {
        let path = self.child_path(index);
        self.tree.update(&path, |n| n.state = NodeState::Starting);
        let siblings = self.siblings();
        let start = self.slots[index].spec.start.clone();
        let cell = start(myself.clone(), siblings).await?;
        self.tree.register(&path, cell.clone());
        let slot = &mut self.slots[index];
        slot.cell = Some(cell);
        slot.started = Some(Instant::now());
        self.tree.update(&path, |n| {
            n.state = NodeState::Running;
            n.started_at = Some(SystemTime::now());
        });
        tracing::debug!(actor = %path, "started");
        Ok(())
    }

    /// Stops the running children from the last down to `from`, waiting for each. Children of a
    /// one-for-one supervisor are independent (the root's are the contexts), so they stop
    /// together: a shutdown takes as long as the slowest context, not the sum of them all.
    async fn stop_children_from(&mut self, from: usize, reason: &str, state_after: NodeState) {
        if self.policy.strategy == Strategy::OneForOne {
            self.stop_together(from, reason, state_after).await;
            return;
        }
        for index in (from..self.slots.len()).rev() {
            if let Some(cell) = self.slots[index].cell.take() {
                let path = self.child_path(index);
                if cell.stop_and_wait(Some(reason.to_string()), Some(Duration::from_secs(10))).await.is_err() {
                    tracing::warn!(actor = %path, "did not stop within 10 s; killing it");
                    cell.kill();
                }
                self.tree.update(&path, |n| n.state = state_after);
            }
        }
    }

    /// Stops the running children from `from` on, all at once, waiting for them all.
    async fn stop_together(&mut self, from: usize, reason: &str, state_after: NodeState) {
        {
            let stopping: Vec<_> = (from..self.slots.len())
                .filter_map(|index| self.slots[index].cell.take().map(|cell| (self.child_path(index), cell)))
                .map(|(path, cell)| async move {
                    if cell.stop_and_wait(Some(reason.to_string()), Some(Duration::from_secs(10))).await.is_err() {
                        tracing::warn!(actor = %path, "did not stop within 10 s; killing it");
                        cell.kill();
                    }
                    path
                })
                .collect();
            for path in futures::future::join_all(stopping).await {
                self.tree.update(&path, |n| n.state = state_after);
            }
        }
    }

    /// Handles a child that exited on its own. Returns an error to escalate.
    fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let path = self.child_path(index);
        let now = Instant::now();
        let slot = &mut self.slots[index];
        slot.cell = None;
        if slot.started.is_some_and(|t| now.duration_since(t) > self.policy.window) {
            slot.consecutive_failures = 0;
        }
        let delay = self.policy.backoff(slot.consecutive_failures);
        slot.consecutive_failures += 1;
        self.tree.update(&path, |n| {
            n.state = NodeState::Restarting;
            n.last_failure = Some(reason.clone());
            n.last_failure_at = Some(SystemTime::now());
        });

        // A child that exits while a restart is already scheduled (a consumer whose cache just
        // died, say) is part of the same incident: it counts once toward the restart limit.
        let rest_for_one = self.policy.strategy == Strategy::RestForOne;
        let same_incident = rest_for_one && self.pending_restart.is_some();
        if !same_incident {
            self.recent_restarts.push_back(now);
        }
        while self.recent_restarts.front().is_some_and(|t| now.duration_since(*t) > self.policy.window) {
            self.recent_restarts.pop_front();
        }
        if !same_incident && self.recent_restarts.len() > self.policy.max_restarts {
            let summary = format!(
                "{path} failed {} times within {:?}; last failure: {reason}",
                self.recent_restarts.len(),
                self.policy.window
            );
            match self.policy.when_exhausted {
                WhenExhausted::Escalate => {
                    tracing::error!(supervisor = %self.path, actor = %path, %reason, "restart limit reached; escalating");
                    self.tree.update(&self.path, |n| n.state = NodeState::Restarting);
                    // Failing takes every child down with this supervisor; say so in the tree.
                    for i in 0..self.slots.len() {
                        let child = self.child_path(i);
                        self.tree.update(&child, |n| n.state = NodeState::Stopped);
                    }
                    return Err(summary.into());
                }
                WhenExhausted::GiveUp => {
                    tracing::error!(supervisor = %self.path, actor = %path, %reason, "restart limit reached; giving up on it");
                    self.slots[index].given_up = true;
                    self.tree.update(&path, |n| n.state = NodeState::Failed);
                    return Ok(());
                }
            }
        }

        tracing::warn!(actor = %path, %reason, delay_ms = delay.as_millis() as u64, "actor exited; restarting");
        if self.policy.strategy == Strategy::RestForOne {
            for later in index + 1..self.slots.len() {
                if self.slots[later].cell.is_some() {
                    let later_path = self.child_path(later);
                    self.tree.update(&later_path, |n| n.state = NodeState::Restarting);
                }
            }
        }
        if !rest_for_one {
            myself.send_after(delay, move || SupervisorMsg::Restart { index });
        } else if self.pending_restart.is_none_or(|pending| index < pending) {
            // One restart from the earliest failed child restarts every child after it.
            self.pending_restart = Some(index);
            myself.send_after(delay, move || SupervisorMsg::Restart { index });
        }
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let slots = args
            .children
            .into_iter()
            .map(|spec| Slot { spec, cell: None, started: None, consecutive_failures: 0, given_up: false })
            .collect();
        let mut state = SupervisorState {
            path: args.path,
            slots,
            policy: args.policy,
            tree: args.tree,
            recent_restarts: VecDeque::new(),
            pending_restart: None,
        };
        state.tree.update(&state.path, |n| n.state = NodeState::Starting);
        for index in 0..state.slots.len() {
            if let Err(e) = state.start_child(&myself.get_cell(), index).await {
                // Whatever did start must not outlive a supervisor that failed to start.
                state.stop_children_from(0, "supervisor failed to start", NodeState::Stopped).await;
                let path = state.child_path(index);
                state.tree.update(&path, |n| {
                    n.state = NodeState::Failed;
                    n.last_failure = Some(e.to_string());
                });
                return Err(format!("{path}: {e}").into());
            }
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.tree.update(&state.path, |n| {
            n.state = NodeState::Running;
            n.started_at = Some(SystemTime::now());
        });
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // At shutdown a context's children after its first (the writer, which the consumers,
        // responders and the relay's last flush all need) stop together, then the first: each
        // waits out its current poll, so one after another they took half a second a context.
        if state.policy.strategy == Strategy::RestForOne {
            state.stop_together(1, "shutdown", NodeState::Stopped).await;
        }
        state.stop_children_from(0, "shutdown", NodeState::Stopped).await;
        state.tree.update(&state.path, |n| n.state = NodeState::Stopped);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart { index } => {
                if state.pending_restart == Some(index) {
                    state.pending_restart = None;
                }
                if state.slots[index].given_up {
                    return Ok(());
                }
                let last = match state.policy.strategy {
                    Strategy::OneForOne => index,
                    Strategy::RestForOne => {
                        state
                            .stop_children_from(index + 1, "restarting with an earlier sibling", NodeState::Restarting)
                            .await;
                        state.slots.len() - 1
                    }
                };
                for i in index..=last {
                    if state.slots[i].cell.is_some() {
                        continue;
                    }
                    if let Err(e) = state.start_child(&myself.get_cell(), i).await {
                        tracing::warn!(actor = %state.child_path(i), error = %e, "restart failed");
                        return state.on_child_exit(&myself, i, format!("restart failed: {e}"));
                    }
                    let path = state.child_path(i);
                    state.tree.update(&path, |n| n.restarts += 1);
                    if let Some(metrics) = crate::metrics::get() {
                        metrics
                            .actor_restarts
                            .get_or_create(&crate::metrics::ActorLabels { actor: path.clone() })
                            .inc();
                    }
                    tracing::info!(actor = %path, "restarted");
                }
                Ok(())
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_else(|| "no reason given".into())))
            }
            _ => return Ok(()),
        };
        // Children we stopped ourselves were taken out of their slot first, so they match none.
        let id = cell.get_id();
        match state.slots.iter().position(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == id)) {
            Some(index) => state.on_child_exit(&myself, index, reason),
            None => Ok(()),
        }
    }
}

/// Holds the current address of an actor that may be restarted, for callers outside the tree.
pub struct ActorSlot<M: ractor::Message>(Arc<Mutex<Option<ActorRef<M>>>>);

impl<M: ractor::Message> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        ActorSlot(self.0.clone())
    }
}

impl<M: ractor::Message> Default for ActorSlot<M> {
    fn default() -> Self {
        ActorSlot(Arc::new(Mutex::new(None)))
    }
}

impl<M: ractor::Message> ActorSlot<M> {
    /// Records the newest incarnation.
    pub fn set(&self, actor: ActorRef<M>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(actor);
        }
    }

    /// The newest incarnation, if it is running.
    pub fn get(&self) -> Option<ActorRef<M>> {
        let actor = self.0.lock().ok()?.clone()?;
        (actor.get_status() == ractor::ActorStatus::Running).then_some(actor)
    }

    /// Waits up to `limit` for a running incarnation (one may be restarting).
    pub async fn wait(&self, limit: Duration) -> Option<ActorRef<M>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(actor) = self.get() {
                return Some(actor);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
