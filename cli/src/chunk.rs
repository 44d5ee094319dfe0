//! `hyperfs chunk`: print the content-defined chunks of files.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use hyperfs_chunker::{leaf_hash, Chunker, HYPERFS_CDC_V1};

#[derive(Debug, Default)]
struct Stats {
    count: u64,
    bytes: u64,
    min: usize,
    max: usize,
}

pub fn run(files: &[std::path::PathBuf], stats: bool) -> Result<()> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let started = Instant::now();
    let mut st = Stats { min: usize::MAX, ..Stats::default() };
    for f in files {
        let reader: Box<dyn Read> = if f.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?)
        };
        chunk_stream(reader, f, |offset, bytes| {
            st.count += 1;
            st.bytes += bytes.len() as u64;
            st.min = st.min.min(bytes.len());
            st.max = st.max.max(bytes.len());
            if stats {
                return Ok(());
            }
            writeln!(out, "{offset} {} {}", bytes.len(), hex::encode(leaf_hash(bytes))).context("writing output")
        })?;
    }
    if stats {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let mean = st.bytes.checked_div(st.count).unwrap_or(0);
        writeln!(out, "preset      {}", HYPERFS_CDC_V1.name)?;
        writeln!(out, "chunks      {}", st.count)?;
        writeln!(out, "bytes       {}", st.bytes)?;
        writeln!(out, "mean size   {mean}")?;
        writeln!(out, "min size    {}", if st.count > 0 { st.min } else { 0 })?;
        writeln!(out, "max size    {}", st.max)?;
        writeln!(out, "throughput  {:.1} MiB/s", st.bytes as f64 / secs / (1 << 20) as f64)?;
    }
    out.flush().context("writing output")
}

/// Reads `r` in pieces and calls `on_chunk(offset, bytes)` for every chunk in order.
fn chunk_stream(mut r: impl Read, name: &Path, mut on_chunk: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
    let mut chunker = Chunker::new(HYPERFS_CDC_V1);
    // `buf` holds the unfinished chunk followed by the newest read; `base` is its file offset.
    let mut buf: Vec<u8> = Vec::with_capacity(HYPERFS_CDC_V1.max_size + (1 << 20));
    let mut base = 0u64;
    let mut piece = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", name.display())),
        };
        buf.extend_from_slice(&piece[..n]);
        let mut cuts = Vec::new();
        chunker.push(&buf[buf.len() - n..], |c| cuts.push(c));
        let mut consumed = 0usize;
        for c in cuts {
            let start = (c.offset - base) as usize;
            on_chunk(c.offset, &buf[start..start + c.len])?;
            consumed = start + c.len;
        }
        buf.drain(..consumed);
        base += consumed as u64;
    }
    if let Some(c) = chunker.finish() {
        let start = (c.offset - base) as usize;
        on_chunk(c.offset, &buf[start..start + c.len])?;
    }
    Ok(())
}
