//! Graceful stop on SIGINT / SIGTERM.

use tokio::sync::watch;

/// Flips `tx` to `true` on the first SIGINT or SIGTERM.
pub async fn stop_on_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: stopping"),
                _ = int.recv() => log::info!("SIGINT: stopping"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    let _ = tx.send(true);
}
