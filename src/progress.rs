//! Progress of long CLI work (training epochs, evaluations). On a terminal: a bar (indicatif). Not
//! on a terminal (CI, a log file, a pipe), where a bar is invisible and a 30-second evaluation
//! would print nothing until the end: a plain line every `LINE_EVERY`, and one when done.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
    total: u64,
    started: Instant,
    /// Position, message, and when a line was last printed (plain mode).
    state: Mutex<(u64, String, Instant)>,
}

impl Progress {
    pub fn new(total: u64, prefix: &str) -> Progress {
        Self::with_terminal(total, prefix, std::io::stderr().is_terminal())
    }

    fn with_terminal(total: u64, prefix: &str, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(prefix.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            prefix: prefix.to_string(),
            total,
            started: now,
            state: Mutex::new((0, String::new(), now)),
        }
    }

    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            return b.set_position(pos);
        }
        let line = {
            let mut st = self.state.lock().expect("progress lock");
            st.0 = pos;
            (st.2.elapsed() >= LINE_EVERY).then(|| {
                st.2 = Instant::now();
                self.line(st.0, &st.1)
            })
        };
        if let Some(l) = line {
            eprintln!("{l}");
        }
    }

    pub fn inc(&self, n: u64) {
        let pos = {
            let mut st = self.state.lock().expect("progress lock");
            st.0 += n;
            st.0
        };
        match &self.bar {
            Some(b) => b.set_position(pos),
            None => self.set_position(pos),
        }
    }

    pub fn set_message(&self, msg: String) {
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => self.state.lock().expect("progress lock").1 = msg,
        }
    }

    /// Clears the bar, or prints the closing line.
    pub fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => {
                let st = self.state.lock().expect("progress lock");
                if self.started.elapsed() >= LINE_EVERY {
                    eprintln!("{} (done)", self.line(st.0, &st.1));
                }
            }
        }
    }

    fn line(&self, pos: u64, msg: &str) -> String {
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * pos as f64 / self.total as f64
        };
        let mut l = format!(
            "{}: {pos}/{} ({pct:.0}%), {:.0} s",
            self.prefix,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        if !msg.is_empty() {
            l.push_str(", ");
            l.push_str(msg);
        }
        l
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_lines_say_where_the_work_is() {
        let p = super::Progress::with_terminal(200, "beauty-1l", false);
        p.set_position(50);
        p.set_message("loss 7.1".into());
        let st = p.state.lock().unwrap();
        assert_eq!(st.0, 50);
        let l = p.line(st.0, &st.1);
        assert!(
            l.starts_with("beauty-1l: 50/200 (25%), 0 s, loss 7.1"),
            "{l}"
        );
    }
}
