//! The queue between the log statements and stderr, and the thread that empties it.
//!
//! A journald that stalls, or a pipe nobody reads, blocks a `write` to stderr. Written from a
//! tokio worker, that would stop every stream the worker runs (with `workers = "auto"` on a
//! 2-CPU host, every stream of the process). So a statement only queues its line; a thread
//! writes them, and when `log_buffer_lines` are already waiting the line is dropped and
//! counted. Nothing here waits on stderr except that thread, and [`Stderr::flush`] at exit,
//! for a bounded time. A line is cut at [`LINE_MAX`] bytes, so the queue holds at most
//! `log_buffer_lines` times that (what peers send is cut far shorter inside lines).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// The longest line queued; longer ones are cut and end in `…`.
pub const LINE_MAX: usize = 8192;

/// A line to write, or a request to say when everything queued before it is written.
enum Msg {
    Line(Vec<u8>),
    Flush(Sender<()>),
}

/// The sending side: a `MakeWriter` for the fmt layer. Cheap to clone.
#[derive(Clone)]
pub struct Stderr {
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Stderr {
    /// Starts the writing thread (`sgw-log`) with room for `lines` waiting lines.
    pub fn start(lines: usize) -> std::io::Result<Stderr> {
        let (tx, rx) = crossbeam_channel::bounded(lines);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("sgw-log".into())
            .spawn(move || write_lines(rx, d))?;
        Ok(Stderr { tx, dropped })
    }

    /// Lines dropped: the queue was full, or stderr refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one line (ending in a newline), cut at [`LINE_MAX`]; dropped and counted when
    /// the queue is full. Never waits.
    pub fn push(&self, line: &[u8]) {
        let line = match line.len() > LINE_MAX {
            true => {
                // Not inside a UTF-8 character: back to the start of the one that is cut.
                let mut end = LINE_MAX - "…\n".len();
                while end > 0 && line[end] & 0xC0 == 0x80 {
                    end -= 1;
                }
                let mut cut = line[..end].to_vec();
                cut.extend_from_slice("…\n".as_bytes());
                cut
            }
            false => line.to_vec(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Line(line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until the lines queued so far are written, at most `within`: a stderr that
    /// takes nothing must not keep a stopping process alive.
    pub fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Flush(done_tx), deadline).is_ok() {
            let _ = done_rx.recv_deadline(deadline);
        }
    }
}

fn write_lines(rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    // Not locked for good: the standard panic hook (this thread's) and what runs before
    // logging is set up write to stderr too.
    let mut out = std::io::stderr();
    for msg in rx {
        match msg {
            // A line stderr refuses (a closed pipe) is lost like one the queue had no room for.
            Msg::Line(line) => {
                if out.write_all(&line).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
}

/// One formatted event (the fmt layer writes each in one `write_all`).
pub struct Line<'a>(&'a Stderr);

impl Write for Line<'_> {
    /// Always `Ok`: on an error the fmt layer would `eprintln!` it, the blocking write to
    /// stderr that this queue is here to avoid. A dropped line is counted instead.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past `lines` waiting, a line is dropped and counted, never waited for; a long line is
    /// cut; `flush` returns within its bound even when nothing is being written.
    #[test]
    fn a_full_queue_drops_and_counts() {
        // A queue whose thread is not running: nothing is taken from it.
        let (tx, _rx) = crossbeam_channel::bounded(2);
        let s = Stderr {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let mut w = Line(&s);
        for _ in 0..5 {
            assert_eq!(w.write(b"line\n").unwrap(), 5);
        }
        assert_eq!(s.dropped(), 3);
        let (tx, rx) = crossbeam_channel::bounded(2);
        let s = Stderr {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        s.push("é".repeat(LINE_MAX).as_bytes());
        s.push(&vec![b'y'; LINE_MAX]);
        let lines: Vec<Vec<u8>> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Line(l) => Some(l),
                Msg::Flush(_) => None,
            })
            .collect();
        assert_eq!(lines.len(), 2);
        let cut = std::str::from_utf8(&lines[0]).expect("cut between characters");
        assert!(
            cut.ends_with("é…\n") && cut.len() <= LINE_MAX,
            "{}",
            cut.len()
        );
        assert_eq!(lines[1], vec![b'y'; LINE_MAX]);
        let t = Instant::now();
        s.flush(Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
