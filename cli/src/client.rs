//! Talking to the data directory's node: one JSON request and reply per line over its control
//! socket, starting the node in the background when none runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::node;

/// Sends `request` to the node of `dir` and returns its answer; starts a node first if none
/// runs and `start` is set.
pub fn request(dir: &Path, request: &Value, start: bool) -> Result<Value> {
    let sock = node::socket_path(dir);
    let conn = match UnixStream::connect(&sock) {
        Ok(c) => c,
        Err(_) if start => spawn_and_connect(dir)?,
        Err(_) => bail!("no node runs on {}", dir.display()),
    };
    let mut w = conn.try_clone()?;
    writeln!(w, "{request}").context("sending to the node")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).context("reading the node's reply")?;
    if line.is_empty() {
        bail!("the node closed the connection without replying (see {})", dir.join("node.log").display());
    }
    let reply: Value = serde_json::from_str(&line).context("the node's reply is not JSON")?;
    match reply.get("error").and_then(Value::as_str) {
        Some(e) => Err(anyhow!("{e}")),
        None => Ok(reply["ok"].clone()),
    }
}

/// Starts `hyperfs daemon` for `dir` in the background (its own session, output to
/// `node.log`) and waits for its socket.
fn spawn_and_connect(dir: &Path) -> Result<UnixStream> {
    node::claim_dir(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .with_context(|| format!("opening {}", dir.join("node.log").display()))?;
    let exe = std::env::current_exe().context("finding the hyperfs binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting a node")?;
    let sock = node::socket_path(dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(c) = UnixStream::connect(&sock) {
            return Ok(c);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the node exited ({status}) before serving; see {}", dir.join("node.log").display());
        }
        if Instant::now() > deadline {
            bail!("the node did not start within 15 s; see {}", dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits `DRIVE:/path` (or `hyper://KEY/path`) into the drive and the path ("/" if none).
pub fn split_target(target: &str) -> (String, String) {
    if let Some(rest) = target.strip_prefix("hyper://") {
        return match rest.find('/') {
            Some(i) => (format!("hyper://{}", &rest[..i]), rest[i..].to_owned()),
            None => (target.to_owned(), "/".into()),
        };
    }
    match target.split_once(':') {
        Some((d, p)) => (d.to_owned(), if p.is_empty() { "/".into() } else { p.to_owned() }),
        None => (target.to_owned(), "/".into()),
    }
}

/// Waits until the node process `pid` has exited (its mounts are down and its store closed).
pub fn wait_exit(pid: i32, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let proc = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    loop {
        // Gone, or a zombie nobody has reaped yet: either way it holds nothing any more.
        let alive = std::fs::read_to_string(&proc)
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false);
        if pid <= 0 || !alive {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node (pid {pid}) did not stop within 60 s; see {}", dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
