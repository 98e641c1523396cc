//! Audit events as JSON lines, written by their own thread so a slow disk never slows a decision.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;

/// Events waiting to be written before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// A destination for audit events.
#[derive(Debug)]
pub struct AuditSink {
    tx: Option<SyncSender<String>>,
    dropped: Counter,
    writer: Option<JoinHandle<()>>,
}

impl AuditSink {
    /// Writes to `path` (appending), or to stdout for `-`.
    pub fn open(path: &Path, dropped: Counter) -> std::io::Result<AuditSink> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new().name("portcullis-audit".into()).spawn(move || write_loop(rx, out))?;
        Ok(AuditSink { tx: Some(tx), dropped, writer: Some(writer) })
    }

    /// Queues one event; never blocks.
    pub fn send(&self, line: String) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line)
        {
            self.dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
        // Flush whenever the queue is momentarily empty: batched under load, prompt when idle.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

impl Drop for AuditSink {
    /// Writes everything queued before returning.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
