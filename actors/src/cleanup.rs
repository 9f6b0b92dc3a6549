//! The cleanup supervisor: drives the CleanupRunner for each run an account actor starts,
//! watches it to completion (or timeout), and reports the outcome back to the account. Refuses
//! protected accounts outright: cleanup must never fail open.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;

use crate::account_actor::AccountCommand;
use crate::domain::account::RunOutcome;
use crate::engine::Shared;
use crate::ports::{CleanupRunner, RunHandle, RunState};

pub struct CleanupSupervisor {
    shared: Arc<Shared>,
    runner: Arc<dyn CleanupRunner>,
    watching: HashSet<String>,
}

impl CleanupSupervisor {
    pub fn new(shared: Arc<Shared>, runner: Arc<dyn CleanupRunner>) -> Self {
        Self {
            shared,
            runner,
            watching: HashSet::new(),
        }
    }
}

impl Actor for CleanupSupervisor {
    type Context = Context<Self>;
}

/// Start (or re-attach to) a run and report its outcome to the account.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub handle: RunHandle,
    /// False when re-attaching after a restart: the run was already started.
    pub start: bool,
}

impl Handler<Watch> for CleanupSupervisor {
    type Result = ();

    fn handle(&mut self, message: Watch, context: &mut Self::Context) {
        let run_id = message.handle.run_id.clone();
        if !self.watching.insert(run_id.clone()) {
            return;
        }
        metrics::gauge!("sandboxd_cleanup_runs_in_flight").set(self.watching.len() as f64);
        let shared = self.shared.clone();
        let runner = self.runner.clone();
        context.spawn(watch(shared, runner, message).into_actor(self).map(
            move |_, actor, _context| {
                actor.watching.remove(&run_id);
                metrics::gauge!("sandboxd_cleanup_runs_in_flight").set(actor.watching.len() as f64);
            },
        ));
    }
}

async fn watch(shared: Arc<Shared>, runner: Arc<dyn CleanupRunner>, message: Watch) {
    let handle = message.handle;
    let (outcome, detail) = if shared
        .settings
        .protected_accounts
        .contains(&handle.account_id)
    {
        tracing::error!(account = %handle.account_id, "refusing to clean a protected account");
        metrics::counter!("sandboxd_cleanup_refusals_total").increment(1);
        (RunOutcome::Failed, "refused: protected account".to_string())
    } else {
        run_to_end(&shared, runner.as_ref(), &handle, message.start).await
    };
    let label = match outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed => "failed",
    };
    metrics::counter!("sandboxd_cleanup_runs_total", "outcome" => label).increment(1);
    let elapsed = (shared.clock.now() - handle.started_at)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    metrics::histogram!("sandboxd_cleanup_run_seconds").record(elapsed);
    tracing::info!(account = %handle.account_id, run = %handle.run_id, outcome = label, %detail, "cleanup run finished");
    let command = AccountCommand::RunFinished {
        run_id: handle.run_id.clone(),
        outcome,
        detail,
    };
    // The account may be restarting: try a few times; if it never answers, its restart
    // re-attaches to this run anyway.
    for attempt in 0..5u32 {
        match shared.account_actor(&handle.account_id).await {
            Ok(Some(actor)) => match actor.send(command.clone()).await {
                Ok(_) => return,
                Err(error) => tracing::warn!(%error, "account unreachable; retrying"),
            },
            Ok(None) => return,
            Err(error) => tracing::warn!(%error, "account lookup failed; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 * 2u64.pow(attempt))).await;
    }
}

async fn run_to_end(
    shared: &Shared,
    runner: &dyn CleanupRunner,
    handle: &RunHandle,
    start: bool,
) -> (RunOutcome, String) {
    if start {
        if let Err(error) = runner.start(handle).await {
            return (RunOutcome::Failed, error.to_string());
        }
    }
    let poll_every = shared
        .clock
        .real_duration(shared.settings.cleanup_poll_interval)
        .max(std::time::Duration::from_millis(5));
    loop {
        if shared.clock.now() - handle.started_at > shared.settings.cleanup_run_timeout {
            return (RunOutcome::Failed, "run timed out".into());
        }
        match runner.poll(handle).await {
            Ok(RunState::Running) => {}
            Ok(RunState::Succeeded) => return (RunOutcome::Succeeded, "succeeded".into()),
            Ok(RunState::Failed(reason)) => return (RunOutcome::Failed, reason),
            Err(error) => {
                metrics::counter!("sandboxd_cleanup_poll_errors_total").increment(1);
                tracing::warn!(%error, run = %handle.run_id, "cleanup poll failed; will poll again");
            }
        }
        tokio::time::sleep(poll_every).await;
    }
}
