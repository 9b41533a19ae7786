//! A log writer that hands lines to a background thread in batches.
//!
//! Every issued token has an audit line. `tracing-appender`'s non-blocking writer sends each
//! line through a channel, wakes its thread whenever that thread was idle, and makes one
//! `write` per line: measured under `token-service bench` (about 200k tokens in 10 s), its
//! thread used 0.42-0.45 s of CPU and was woken 11-14k times. Here a line is appended to a
//! shared buffer under a mutex; the thread sleeps while the buffer is empty and, once a line
//! arrives, writes the whole buffer [`FLUSH_INTERVAL`] later (at once past [`EAGER_BYTES`]):
//! 0.07-0.08 s of CPU and about 1.1k wake-ups for the same load. Nothing is dropped: when
//! the buffer reaches [`LIMIT_BYTES`] (the output cannot keep up), writers wait for room.
//! Shutdown writes out what is buffered but waits at most [`SHUTDOWN_WAIT`] for it: an
//! output that is stuck (a pipe nobody reads) must not keep the process from exiting.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Past this many buffered bytes the thread is woken to write at once.
pub const EAGER_BYTES: usize = 64 * 1024;
/// Past this many buffered bytes writers wait until the thread has taken the buffer.
pub const LIMIT_BYTES: usize = 4 * 1024 * 1024;
/// The longest shutdown waits for the buffered lines to be written.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    closed: bool,
    /// Set by the thread when it has written everything and stopped.
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Written by the thread, and directly by writers once the thread has stopped.
    output: Mutex<Box<dyn Write + Send>>,
    /// Signalled by a batch's first line, when the buffer passes [`EAGER_BYTES`], and when
    /// the writer is closed.
    work: Condvar,
    /// Signalled when the thread has taken the buffer.
    room: Condvar,
    /// Signalled when the thread has stopped.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer side: cheap to clone, one per subscriber.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Owns the background thread; [`BatchGuard::finish`] (or dropping it) writes out what is
/// buffered and stops the thread.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the background thread writing to `output`.
pub fn batch_writer(output: impl Write + Send + 'static) -> io::Result<(BatchWriter, BatchGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        output: Mutex::new(Box::new(output)),
        work: Condvar::new(),
        room: Condvar::new(),
        done: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared)
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        BatchGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The thread: sleeps while there is nothing to write; once a line arrives, lets a batch
/// gather for up to [`FLUSH_INTERVAL`] (less if it passes [`EAGER_BYTES`] or the writer is
/// closing), then takes the whole buffer and writes it.
fn write_batches(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            while state.buffer.is_empty() && !state.closed {
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            let deadline = Instant::now() + FLUSH_INTERVAL;
            while state.buffer.len() < EAGER_BYTES && !state.closed {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = shared
                    .work
                    .wait_timeout(state, left)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            std::mem::swap(&mut batch, &mut state.buffer);
            state.closed
        };
        shared.room.notify_all();
        if !batch.is_empty() {
            let mut output = shared.output.lock().unwrap_or_else(|p| p.into_inner());
            // Nowhere to report a failed log write; the next batch tries again.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            batch.clear();
        }
        if closed {
            let mut state = shared.lock();
            if state.buffer.is_empty() {
                state.finished = true;
                shared.done.notify_all();
                return;
            }
        }
    }
}

impl BatchGuard {
    /// Writes out every buffered line and stops the thread, waiting at most
    /// [`SHUTDOWN_WAIT`]; lines a stuck output has not taken by then are lost.
    pub fn finish(mut self) {
        self.stop(SHUTDOWN_WAIT);
    }

    /// Returns whether the thread wrote everything and stopped within `wait`.
    fn stop(&mut self, wait: Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.work.notify_all();
        let (state, _) = self
            .shared
            .done
            .wait_timeout_while(state, wait, |state| !state.finished)
            .unwrap_or_else(|p| p.into_inner());
        let finished = state.finished;
        drop(state);
        if finished {
            let _ = thread.join();
        }
        // Otherwise the thread stays blocked in the output's `write` and is left behind.
        finished
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.stop(SHUTDOWN_WAIT);
    }
}

/// One event's writer, borrowed from the [`BatchWriter`].
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        while state.buffer.len() >= LIMIT_BYTES && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        if state.closed {
            // A late line after shutdown (from another thread): written directly.
            drop(state);
            let mut output = self.shared.output.lock().unwrap_or_else(|p| p.into_inner());
            output.write_all(line)?;
            return Ok(line.len());
        }
        // The thread is woken once per batch (its first line) and when the batch is large,
        // never for every line.
        let first = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        if first || state.buffer.len() >= EAGER_BYTES {
            self.shared.work.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// An output shared with the test, optionally slow, recording the largest batch.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
        largest: Arc<Mutex<usize>>,
        /// When set, every write waits until it holds `true`: an output that is stuck.
        gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    }

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if let Some(gate) = &self.gate {
                let (open, opened) = &**gate;
                let _open = opened
                    .wait_while(open.lock().unwrap(), |open| !*open)
                    .unwrap();
            }
            let mut largest = self.largest.lock().unwrap();
            *largest = (*largest).max(data.len());
            self.bytes.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn write_lines(writer: &BatchWriter, thread: usize, count: usize) {
        for n in 0..count {
            let line = format!("thread {thread} line {n} {}\n", "x".repeat(n % 200));
            writer.make_writer().write_all(line.as_bytes()).unwrap();
        }
    }

    /// Every line of every thread arrives whole and in its thread's order.
    fn assert_complete(bytes: &[u8], threads: usize, count: usize) {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let mut next = vec![0usize; threads];
        for line in text.lines() {
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("thread"), "torn line: {line:?}");
            let thread: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(words.next(), Some("line"));
            let n: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(n, next[thread], "thread {thread} out of order");
            assert_eq!(words.next().unwrap().len(), n % 200);
            next[thread] += 1;
        }
        assert_eq!(next, vec![count; threads]);
    }

    /// `lines` lines from each of `threads` threads at once.
    fn write_from_threads(writer: &BatchWriter, threads: usize, lines: usize) {
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let writer = writer.clone();
                scope.spawn(move || write_lines(&writer, thread, lines));
            }
        });
    }

    #[test]
    fn lines_from_many_threads_all_arrive_whole_and_in_order() {
        let output = Recorder::default();
        let (writer, guard) = batch_writer(output.clone()).unwrap();
        write_from_threads(&writer, 4, 5_000);
        guard.finish();
        assert_complete(&output.bytes.lock().unwrap(), 4, 5_000);
    }

    #[test]
    fn lines_are_batched_and_written_within_the_interval() {
        let output = Recorder::default();
        let (writer, guard) = batch_writer(output.clone()).unwrap();
        write_lines(&writer, 0, 100);
        std::thread::sleep(FLUSH_INTERVAL * 20);
        // Written without a flush or a shutdown, and in fewer writes than lines.
        assert_complete(&output.bytes.lock().unwrap(), 1, 100);
        assert!(*output.largest.lock().unwrap() > 1_000);
        drop(guard);
    }

    #[test]
    fn a_line_after_an_idle_spell_wakes_the_sleeping_thread() {
        let output = Recorder::default();
        let (writer, guard) = batch_writer(output.clone()).unwrap();
        write_lines(&writer, 0, 1);
        std::thread::sleep(FLUSH_INTERVAL * 20);
        assert_complete(&output.bytes.lock().unwrap(), 1, 1);
        // The thread now sleeps on an empty buffer; the next line alone must wake it.
        writer
            .make_writer()
            .write_all(b"thread 0 line 1 x\n")
            .unwrap();
        std::thread::sleep(FLUSH_INTERVAL * 20);
        assert_complete(&output.bytes.lock().unwrap(), 1, 2);
        drop(guard);
    }

    #[test]
    fn a_stuck_output_makes_writers_wait_instead_of_dropping_lines() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let output = Recorder {
            gate: Some(gate.clone()),
            ..Recorder::default()
        };
        let (writer, guard) = batch_writer(output.clone()).unwrap();
        // The output is stuck on its first batch, which holds whatever was buffered when
        // the thread took it: at most the limit. ~9.7 MB of lines is more than twice the
        // limit, so the buffer fills to the limit again, however late the thread ran, and
        // the writers wait.
        let writers = {
            let writer = writer.clone();
            std::thread::spawn(move || write_from_threads(&writer, 2, 40_000))
        };
        let buffered = || writer.shared.lock().buffer.len();
        let started = Instant::now();
        while buffered() < LIMIT_BYTES {
            assert!(started.elapsed() < Duration::from_secs(60), "never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(buffered() < LIMIT_BYTES + 300, "grew past the limit");
        assert!(!writers.is_finished(), "the writers wait for room");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        writers.join().unwrap();
        guard.finish();
        assert_complete(&output.bytes.lock().unwrap(), 2, 40_000);
        // The buffer filled up to the limit (writers had to wait) and never grew past it by
        // more than one line.
        let largest = *output.largest.lock().unwrap();
        assert!(
            (LIMIT_BYTES..LIMIT_BYTES + 300).contains(&largest),
            "{largest}"
        );
    }

    #[test]
    fn a_stuck_output_does_not_keep_shutdown_waiting() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let output = Recorder {
            gate: Some(gate.clone()),
            ..Recorder::default()
        };
        let (writer, mut guard) = batch_writer(output.clone()).unwrap();
        write_lines(&writer, 0, 10);
        let started = Instant::now();
        assert!(
            !guard.stop(Duration::from_millis(200)),
            "the output is stuck"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Once the output moves again, the thread left behind writes what it held and ends.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let started = Instant::now();
        while !writer.shared.lock().finished {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_complete(&output.bytes.lock().unwrap(), 1, 10);
    }

    #[test]
    fn a_line_after_shutdown_is_written_directly() {
        let output = Recorder::default();
        let (writer, guard) = batch_writer(output.clone()).unwrap();
        write_lines(&writer, 0, 3);
        guard.finish();
        writer
            .make_writer()
            .write_all(b"thread 0 line 3 xxx\n")
            .unwrap();
        assert_complete(&output.bytes.lock().unwrap(), 1, 4);
    }
}
