//! The control protocol between the command line and the node, over the node's Unix socket.
//!
//! A request is one JSON line. The node answers with frames: any number of [`Frame::Progress`]
//! lines and [`Frame::Bytes`] blocks (the bytes of a file, as they are), then one reply line,
//! `{"ok": …}` or `{"error": …}`. A JSON frame is one line of JSON; a bytes frame is a line
//! `=LENGTH` followed by exactly LENGTH raw bytes (JSON never starts with `=`). Both sides read
//! and write frames only through this module.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The most bytes one frame carries (the reader refuses more: a frame is never a reason to
/// allocate without bound).
pub const MAX_BYTES_FRAME: usize = 16 << 20;

/// One frame from the node.
#[derive(Debug)]
pub enum Frame {
    /// How far a long request has come.
    Progress(Value),
    /// Bytes of a file.
    Bytes(Vec<u8>),
    /// The answer; the last frame of a request.
    Reply(Result<Value, String>),
}

/// What a request's handler sends before its reply.
pub enum Out<'a> {
    Progress(Value),
    Bytes(&'a [u8]),
}

/// Writes one frame before the reply.
pub fn write_out(w: &mut impl Write, out: Out<'_>) -> std::io::Result<()> {
    match out {
        // One write per frame: `Value`'s Display writes many small pieces (a send each).
        Out::Progress(v) => w.write_all(format!("{}\n", json!({"progress": v})).as_bytes()),
        Out::Bytes(b) => {
            for part in b.chunks(MAX_BYTES_FRAME) {
                w.write_all(format!("={}\n", part.len()).as_bytes())?;
                w.write_all(part)?;
            }
            Ok(())
        }
    }
}

/// Writes the reply that ends a request.
pub fn write_reply(w: &mut impl Write, reply: Result<Value, String>) -> std::io::Result<()> {
    let line = match reply {
        Ok(v) => json!({"ok": v}),
        Err(e) => json!({"error": e}),
    };
    w.write_all(format!("{line}\n").as_bytes())
}

/// Reads the next frame; `None` at the end of the stream.
pub fn read_frame(r: &mut impl BufRead) -> Result<Option<Frame>> {
    let mut line = String::new();
    if r.read_line(&mut line).context("reading from the node")? == 0 {
        return Ok(None);
    }
    if let Some(len) = line.strip_prefix('=') {
        let len: usize = len.trim_end().parse().context("a bytes frame's length")?;
        if len > MAX_BYTES_FRAME {
            bail!("a bytes frame of {len} bytes (at most {MAX_BYTES_FRAME})");
        }
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes).context("reading a bytes frame")?;
        return Ok(Some(Frame::Bytes(bytes)));
    }
    let mut v: Value = serde_json::from_str(&line).context("the node's frame is not JSON")?;
    Ok(Some(if let Some(e) = v.get("error") {
        Frame::Reply(Err(e.as_str().unwrap_or_default().to_owned()))
    } else if v.get("ok").is_some() {
        Frame::Reply(Ok(v["ok"].take()))
    } else {
        Frame::Progress(v["progress"].take())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_through_as_written() {
        let mut wire = Vec::new();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        write_out(&mut wire, Out::Progress(json!({"blocks": 3}))).expect("write");
        write_out(&mut wire, Out::Bytes(b"")).expect("write");
        write_out(&mut wire, Out::Bytes(&bytes)).expect("write");
        // Bytes that look like frames are bytes.
        write_out(&mut wire, Out::Bytes(b"=5\n{\"ok\":1}\n")).expect("write");
        write_reply(&mut wire, Ok(json!({"bytes": 70_000}))).expect("write");
        let mut r = std::io::Cursor::new(wire);
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r).expect("read") {
            got.push(f);
        }
        assert!(matches!(&got[0], Frame::Progress(v) if v["blocks"] == 3));
        assert!(matches!(&got[1], Frame::Bytes(b) if b == &bytes));
        assert!(matches!(&got[2], Frame::Bytes(b) if b == b"=5\n{\"ok\":1}\n"));
        assert!(matches!(&got[3], Frame::Reply(Ok(v)) if v["bytes"] == 70_000));
        assert_eq!(got.len(), 4, "an empty bytes frame is not sent");
    }

    #[test]
    fn a_bytes_frame_past_the_limit_or_cut_short_is_an_error() {
        let mut r = std::io::Cursor::new(format!("={}\n", MAX_BYTES_FRAME + 1).into_bytes());
        assert!(read_frame(&mut r).is_err());
        let mut r = std::io::Cursor::new(b"=10\nabc".to_vec());
        assert!(read_frame(&mut r).is_err());
        let mut r = std::io::Cursor::new(b"{\"error\":\"no file at /x\"}\n".to_vec());
        assert!(matches!(read_frame(&mut r).expect("read"), Some(Frame::Reply(Err(e))) if e == "no file at /x"));
    }
}
