//! `l2d` processes for tests that need real separate nodes: spawned with piped stderr, their
//! log lines searchable, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const L2D: &str = env!("CARGO_BIN_EXE_l2d");

/// The repository's root (where the shipped data, pools and policies are).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `l2d args` to completion in the repository's root and asserts that it succeeded.
pub fn l2d_ok(args: &[&str]) -> Output {
    let out = Command::new(L2D)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run l2d");
    assert!(
        out.status.success(),
        "l2d {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `l2d` process whose stderr lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_bin(L2D, args)
    }

    /// `bin` (another build of l2d, for comparisons) with `args`.
    pub fn spawn_bin(bin: &str, args: &[&str]) -> Self {
        Self::spawn_with(bin, args, &[])
    }

    /// `bin` with `args` and these environment variables (on top of `RUST_LOG=info`).
    pub fn spawn_with(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn l2d");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line containing `needle` (a hang guard of 20 s, not a timing assertion).
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {needle:?} from l2d ({e}); it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The `address=HOST:PORT` field of the first line containing `needle`.
    pub fn address_in(&mut self, needle: &str) -> String {
        let line = self.wait_for(needle);
        let field = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        field.to_owned()
    }

    /// Every stderr line, once the process has exited and closed it (hang guard: 20 s).
    pub fn all_lines(&mut self) -> Vec<String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(e) => panic!(
                    "stderr still open ({e}); it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (hang guard: 20 s) and returns whether it exited cleanly.
    pub fn exit_success(mut self) -> bool {
        for _ in 0..2000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("l2d did not exit; it said:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
