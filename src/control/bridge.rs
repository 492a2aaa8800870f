//! From the control plane's threads to the engine task: commands and inspections sent over
//! the engine's bounded request channel, answered over one-shot channels, every wait bounded.
//!
//! No lock is shared with the engine: an inspection is a closure the engine task runs between
//! two events, returning an owned snapshot. A hung or stopped engine turns into
//! [`BridgeError`] after the timeout, never into a blocked HTTP thread.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc::error::TrySendError, oneshot};

use crate::bus::{AppEngine, EngineHandle, Request};
use crate::core::CoreError;
use crate::core::engine::{Command, Reply};
use crate::core::time::Timestamp;

/// Why the engine did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeError {
    /// The engine task has stopped.
    Gone,
    /// No answer within the bound (the engine is stalled or its queue stays full).
    Timeout,
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Gone => write!(f, "the engine has stopped"),
            BridgeError::Timeout => write!(f, "the engine did not answer in time"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// A blocking, bounded way into the engine for threads outside the tokio runtime.
#[derive(Clone)]
pub struct Bridge {
    /// The engine's handle (also read for its lock-free status).
    pub engine: EngineHandle,
    /// Bound of one round trip.
    pub timeout: Duration,
}

impl Bridge {
    /// A bridge with the given round-trip bound.
    pub fn new(engine: EngineHandle, timeout: Duration) -> Bridge {
        Bridge { engine, timeout }
    }

    /// Queues `req`, waiting (bounded) while the engine's queue is full.
    fn send(&self, mut req: Request, deadline: Instant) -> Result<(), BridgeError> {
        let mut pause = Duration::from_micros(100);
        loop {
            match self.engine.requests.try_send(req) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(BridgeError::Gone),
                Err(TrySendError::Full(r)) => {
                    if crate::bus::clock::mono_std() >= deadline {
                        return Err(BridgeError::Timeout);
                    }
                    req = r;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
        }
    }

    /// Runs `f` on the engine task between two events and returns its result.
    pub fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppEngine, Timestamp) -> T + Send + 'static,
    ) -> Result<T, BridgeError> {
        let deadline = crate::bus::clock::mono_std() + self.timeout;
        let (tx, rx) = std_mpsc::sync_channel(1);
        let job: crate::bus::Inspect = Box::new(move |e, now| {
            let _ = tx.send(f(e, now));
        });
        self.send(Request::Inspect(job), deadline)?;
        let left = deadline.saturating_duration_since(crate::bus::clock::mono_std());
        match rx.recv_timeout(left) {
            Ok(v) => Ok(v),
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(BridgeError::Timeout),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(BridgeError::Gone),
        }
    }

    /// Sends a command and returns the engine's reply.
    ///
    /// The reply travels over the engine's one-shot channel; an inspection queued right behind
    /// the command bounds the wait for the engine to have taken it (the engine handles its
    /// queue in order), then the reply itself is awaited within the same bound (a durable
    /// command is answered after its journal sync, off the engine's loop).
    pub fn command(&self, cmd: Command) -> Result<Result<Reply, CoreError>, BridgeError> {
        let deadline = crate::bus::clock::mono_std() + self.timeout;
        let (tx, mut rx) = oneshot::channel();
        self.send(Request::Command { cmd, reply: Some(tx) }, deadline)?;
        let left = deadline.saturating_duration_since(crate::bus::clock::mono_std());
        let barrier = Bridge { engine: self.engine.clone(), timeout: left };
        barrier.inspect(|_, _| ())?;
        // A command whose change must be on disk first is answered once its journal record is
        // synced (the journal writer thread's group commit), after the engine has moved on:
        // wait for that reply too, within the same bound.
        let mut pause = Duration::from_micros(50);
        loop {
            match rx.try_recv() {
                Ok(r) => return Ok(r),
                Err(oneshot::error::TryRecvError::Closed) => return Err(BridgeError::Gone),
                Err(oneshot::error::TryRecvError::Empty) => {
                    if crate::bus::clock::mono_std() >= deadline {
                        return Err(BridgeError::Timeout);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
            }
        }
    }
}
