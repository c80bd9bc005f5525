//! The real seqserve binary on an ephemeral port, for tests over real HTTP.
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every line the server logged (JSON), as it arrives.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The fields of the server's "listening" log line (local address, max_connections).
    pub listening: Value,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let model = super::random_model(60, 2, 17);
        model.save(dir.path()).unwrap();
        Self::start_with_model(dir, extra)
    }

    pub fn start_with_model(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Self::start_env(dir, extra, &[])
    }

    pub fn start_env(dir: tempfile::TempDir, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::start_limited(dir, extra, envs, None)
    }

    /// As `start_env`, with the process's open-file limit (soft and hard) set to `nofile`.
    pub fn start_limited(
        dir: tempfile::TempDir,
        extra: &[&str],
        envs: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seqserve"));
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-format",
            "json",
        ]);
        // A repository replaces the one model directory (serve refuses both).
        if !extra.contains(&"--repository") {
            cmd.arg("--model").arg(dir.path());
        }
        cmd.args(["--device", "cpu", "--threads", "1"])
            .args(extra)
            .env("SEQSERVE_LOG", "info")
            .envs(envs.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start seqserve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "listening" {
                        let _ = tx.send(v["fields"].clone());
                    }
                }
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server listening");
        let addr = listening["local"].as_str().unwrap().to_string();
        let s = Server {
            child,
            base: format!("http://{addr}"),
            logs,
            listening,
            _dir: dir,
        };
        // Ready once the model is loaded and warmed up.
        let t0 = Instant::now();
        loop {
            if let Ok(r) = blocking_get(&format!("{}/health/ready", s.base)) {
                if r == 200 {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The host:port the server listens on.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking GET returning the status, for readiness polling outside async code.
/// Runs on its own thread, so it also works when called from inside an async test.
/// JSON Lines holdout cases over a 60-item test catalogue: two history items, two relevant ones.
pub fn holdout_lines(n: usize) -> String {
    (0..n)
        .map(|u| {
            format!(
                "{{\"user\": \"u{u}\", \"history\": [\"i{}\", \"i{}\"], \"relevant\": [\"i{}\", \"i{}\"]}}\n",
                1 + u % 50, 1 + (u * 7) % 50, 1 + (u * 3) % 60, 1 + (u * 11) % 60
            )
        })
        .collect()
}

pub fn blocking_get(url: &str) -> Result<u16, ()> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| ())?;
        rt.block_on(async {
            reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|_| ())
        })
    })
    .join()
    .map_err(|_| ())?
}

pub async fn post(url: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, v, headers)
}

/// The /metrics page.
pub async fn metrics_text(s: &Server) -> String {
    reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sum of the /metrics samples whose line starts with `name_and_labels`.
pub async fn metric_value(s: &Server, name_and_labels: &str) -> f64 {
    metrics_text(s)
        .await
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
