//! Places where a test stops one call of the task lifecycle, to force an interleaving
//! with another call deterministically (compiled into tests only).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// A place in the lifecycle where a call can be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pause {
    /// BeginTask: the task is stored, not yet live.
    BeginStored,
    /// Consent withdrawal: the live tasks' revocations are prepared, the store not yet
    /// asked.
    WithdrawPrepared,
    /// Rotation: the new SVID is issued and counted, not yet recorded in the store.
    RotateIssued,
    /// Rotation: the new SVID is recorded, not yet shown.
    RotateRecorded,
}

/// What a call held at an armed place does: says it arrived, then waits to go on.
type Hold = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// The armed places; each holds the first call that reaches it, once.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    armed: Mutex<HashMap<Pause, Hold>>,
}

/// A call held at a [`Pause`]: wait until one arrives, then let it go on.
#[derive(Debug)]
pub(crate) struct Held {
    reached: oneshot::Receiver<()>,
    resume: oneshot::Sender<()>,
}

impl Hooks {
    /// Holds the next call that reaches `at`.
    pub(crate) fn arm(&self, at: Pause) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (resume, resume_rx) = oneshot::channel();
        self.armed
            .lock()
            .unwrap()
            .insert(at, (reached_tx, resume_rx));
        Held { reached, resume }
    }

    /// Called by the lifecycle at `at`: returns at once unless a test armed it.
    pub(crate) async fn pause(&self, at: Pause) {
        let armed = self.armed.lock().unwrap().remove(&at);
        if let Some((reached, resume)) = armed {
            let _ = reached.send(());
            let _ = resume.await;
        }
    }
}

impl Held {
    /// Waits until a call is held here.
    pub(crate) async fn reached(&mut self) {
        (&mut self.reached)
            .await
            .expect("the hook is armed until reached");
    }

    /// Lets the held call go on.
    pub(crate) fn resume(self) {
        let _ = self.resume.send(());
    }
}
