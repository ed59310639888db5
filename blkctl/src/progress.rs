//! Progress of blkctl's long offline work (`qcow2 convert`, `raid scrub` and `replace`, `thin
//! check`, `bench`) on stderr: a bar when stderr is a terminal, nothing when it is not (a script
//! or a log reads only the result), and qemu-img's `(NN.NN/100%)` text when `convert -p` asks
//! for progress on a pipe.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing (stderr is not a terminal and nobody asked).
    Off,
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// qemu-img's `\r    (NN.NN/100%)` text, for `convert -p` on a pipe.
    Plain,
}

/// The rule: a bar on a terminal; the plain text when `forced` (`-p`) on anything else;
/// otherwise silent.
pub fn decide(stderr_is_terminal: bool, forced: bool) -> Show {
    match (stderr_is_terminal, forced) {
        (true, _) => Show::Bar,
        (false, true) => Show::Plain,
        (false, false) => Show::Off,
    }
}

/// [`decide`] for this process's stderr.
pub fn show_on_stderr(forced: bool) -> Show {
    decide(std::io::stderr().is_terminal(), forced)
}

/// What a [`Meter`] counts, for the bar's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes, shown in IEC units with a rate.
    Bytes,
    /// Steps of the work (rows, cases), shown as `done/total`.
    Steps,
    /// Thousandths of the whole (a fraction from a status poll), shown as a percentage.
    Permille,
}

/// A progress meter of `total` units on stderr, shown as [`Show`] says.
pub struct Meter {
    show: Show,
    bar: Option<ProgressBar>,
    total: u64,
    /// Last plain percentage printed, in hundredths (printed only when it changes).
    last: u64,
}

impl Meter {
    /// A meter labelled `label` for `total` units.
    pub fn new(label: &str, unit: Unit, total: u64, show: Show) -> Meter {
        let bar = (show == Show::Bar).then(|| {
            let counts = match unit {
                Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
                Unit::Steps => "{pos}/{len} ({eta} left)",
                Unit::Permille => "{percent}%",
            };
            let template = format!("{{msg}} [{{wide_bar}}] {counts}");
            let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(style.progress_chars("=> "));
            bar.set_message(label.to_string());
            bar
        });
        Meter { show, bar, total, last: u64::MAX }
    }

    /// `done` of the total are finished.
    pub fn set(&mut self, done: u64) {
        match self.show {
            Show::Off => {}
            Show::Bar => {
                if let Some(b) = &self.bar {
                    b.set_position(done);
                }
            }
            Show::Plain => {
                let p = (u128::from(done.min(self.total)) * 10_000 / u128::from(self.total.max(1))) as u64;
                if p != self.last {
                    self.last = p;
                    let mut e = std::io::stderr();
                    let _ = write!(e, "\r    ({}.{:02}/100%)", p / 100, p % 100);
                    let _ = e.flush();
                }
            }
        }
    }

    /// Change the total (a bench's case count known only later, say).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Run `f` (printing a line, say) with the bar hidden, so the two do not garble each other.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// The work ended: the bar is cleared, the plain text ends its line.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.show == Show::Plain && self.last != u64::MAX {
            eprintln!();
            self.last = u64::MAX;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.end();
    }
}

/// A thread that polls `get` for the fraction done (0.0 to 1.0) while a long step runs on the
/// calling thread, and shows it on a [`Meter`]; dropping it stops the thread at once.
pub struct Watch {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Start watching; with [`Show::Off`] no thread is started.
    pub fn start(label: &'static str, show: Show, get: impl Fn() -> Option<f64> + Send + 'static) -> Watch {
        if show == Show::Off {
            return Watch { stop: None, thread: None };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut meter = Meter::new(label, Unit::Permille, 1000, show);
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_millis(200)) {
                if let Some(p) = get() {
                    meter.set((p.clamp(0.0, 1.0) * 1000.0) as u64);
                }
            }
            meter.finish();
        });
        Watch { stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A spinner with the time elapsed, for work whose size is not known beforehand (`thin check`
/// reading a pool's metadata); cleared when dropped. Shown only on a terminal.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Start spinning with `label`, when `show` is [`Show::Bar`].
    pub fn start(label: &str, show: Show) -> Spinner {
        Spinner((show == Show::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_only_on_a_terminal_plain_text_only_when_forced() {
        assert_eq!(decide(true, false), Show::Bar);
        assert_eq!(decide(true, true), Show::Bar);
        assert_eq!(decide(false, true), Show::Plain);
        assert_eq!(decide(false, false), Show::Off);
    }

    #[test]
    fn an_off_meter_and_watch_do_nothing_and_never_poll() {
        let mut m = Meter::new("x", Unit::Bytes, 0, Show::Off);
        m.set(5);
        m.set_total(10);
        m.finish();
        let w = Watch::start("x", Show::Off, || panic!("polled while off"));
        drop(w);
        drop(Spinner::start("x", Show::Off));
        assert_eq!(Meter::new("x", Unit::Steps, 3, Show::Off).suspend(|| 7), 7);
    }
}
