//! Talking to the data directory's node over its control socket ([`crate::control`]),
//! starting the node in the background when none runs.

use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::Request;
use crate::control::Frame;
use crate::node;

/// Sends `request` to the node of `dir` and returns its reply as the type that request gets
/// back ([`crate::api`]); starts a node first if none runs and `start` is set.
pub fn call<T: DeserializeOwned>(dir: &Path, request: &Request, start: bool) -> Result<T> {
    call_streaming(dir, request, start, &mut |_| Ok(()))
}

/// Like [`call`], for requests whose node sends frames before its reply (progress, the bytes
/// of a file): each goes to `on_frame` as it arrives.
pub fn call_streaming<T: DeserializeOwned>(
    dir: &Path,
    request: &Request,
    start: bool,
    on_frame: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<T> {
    let reply = exchange(dir, request, start, on_frame)?;
    serde_json::from_value(reply).context("the node's reply is not what this version of hyperfs expects")
}

fn exchange(
    dir: &Path,
    request: &Request,
    start: bool,
    on_frame: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<Value> {
    let request = serde_json::to_string(request)?;
    if node::is_data_dir(dir) {
        node::check_private(dir)?;
    }
    let sock = node::socket_path(dir);
    // A node killed a moment ago may still hold its socket while its threads exit: it takes
    // the connection and then drops it unread (a reset, or a broken pipe as the request goes).
    // The request was never read, so it is sent again, to the node started in its place.
    let mut resets = 0;
    'connect: loop {
        let conn = match UnixStream::connect(&sock) {
            Ok(c) => c,
            Err(_) if start => spawn_and_connect(dir)?,
            Err(_) => bail!("no node runs on {}", dir.display()),
        };
        let mut w = conn.try_clone()?;
        if let Err(e) = writeln!(w, "{request}") {
            let dropped = matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset);
            if dropped && start && resets < 50 {
                resets += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue 'connect;
            }
            return Err(anyhow::Error::new(e).context("sending to the node"));
        }
        let mut conn = BufReader::with_capacity(1 << 20, conn);
        let mut first = true;
        loop {
            let frame = match crate::control::read_frame(&mut conn) {
                Err(e) if first && start && resets < 50 && is_reset(&e) => {
                    resets += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'connect;
                }
                f => f?,
            };
            first = false;
            match frame {
                None => {
                    bail!("the node closed the connection without replying (see {})", dir.join("node.log").display())
                }
                Some(Frame::Reply(Ok(v))) => return Ok(v),
                Some(Frame::Reply(Err(e))) => return Err(anyhow!("{e}")),
                Some(f) => on_frame(f)?,
            }
        }
    }
}

fn is_reset(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Starts `hyperfs daemon` for `dir` in the background (its own session, output to
/// `node.log`) and waits for its socket.
fn spawn_and_connect(dir: &Path) -> Result<UnixStream> {
    node::claim_dir(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
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
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Splits `DRIVE:/path` (or `hyper://KEY/path`) into the drive and the path ("/" if none).
pub fn split_target(target: &str) -> (String, String) {
    if let Some(rest) = target.strip_prefix("hyper://") {
        return match rest.find('/') {
            // `hyper://KEY/path`, and `hyper://KEY:/path` as a drive name takes it.
            Some(i) => (format!("hyper://{}", rest[..i].trim_end_matches(':')), rest[i..].to_owned()),
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
        // Gone, or a zombie nobody has reaped yet: either way it holds nothing any more. A
        // zombie leader whose other threads are still exiting still holds the store (its files
        // close with the last thread): a command run right after was refused the store's lock.
        let zombie = |stat: String| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        let alive = std::fs::read_to_string(&proc).is_ok_and(|s| !zombie(s) || threads > 1);
        if pid <= 0 || !alive {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node (pid {pid}) did not stop within 60 s; see {}", dir.join("node.log").display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-line progress bar on standard error, redrawn at most ten times a second; silent when
/// standard error is not a terminal.
pub struct ProgressBar {
    on: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl ProgressBar {
    pub fn new(enabled: bool) -> ProgressBar {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) == 1 };
        ProgressBar { on: enabled && tty, started: Instant::now(), drawn: None }
    }

    /// Shows how far an import, export or clone has come.
    pub fn show(&mut self, p: &crate::api::MirrorProgress) {
        if !self.on || self.drawn.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.drawn = Some(Instant::now());
        let (bytes, total) = (p.bytes, p.total_bytes);
        let frac = if total == 0 { 1.0 } else { (bytes as f64 / total as f64).min(1.0) };
        let width = 24;
        let full = (frac * width as f64) as usize;
        let rate = bytes as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r[{}{}] {:>3}%  {} / {}  {}/{} files  {}/s \x1b[K",
            "#".repeat(full),
            "-".repeat(width - full),
            (frac * 100.0) as u32,
            human_bytes(bytes),
            human_bytes(total),
            p.files,
            p.total_files,
            human_bytes(rate as u64)
        );
    }

    /// Clears the bar's line.
    pub fn done(&self) {
        if self.on && self.drawn.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
