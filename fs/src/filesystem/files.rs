//! Files: open, create, read (with read-ahead), write into the staging file, and the commit
//! of a changed file as one drive version on flush, fsync or release.

use super::*;

impl Fs {
    // ---- files

    /// Opens a file; returns the handle.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Fh> {
        let write = flags & flags::ACCMODE != libc::O_RDONLY;
        let kind = self.nodes().map.get(&ino).map(|n| n.kind).ok_or(Errno(libc::ENOENT))?;
        if kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        if matches!(kind, Kind::Special(_)) {
            // The kernel opens FIFOs, sockets and devices itself; one asked of the drive (a
            // create that raced a mknod) must not become a file written over its entry.
            return Err(Errno(libc::ENXIO));
        }
        if write {
            self.writable()?;
            let file = self.open_file(ino)?;
            if flags & flags::TRUNC != 0 {
                let mut f = lock(&file);
                if f.size != 0 || f.staged.is_none() {
                    self.resize(ino, &mut f, 0)?;
                    let now = SystemTime::now();
                    (f.meta.mtime, f.meta.ctime, f.dirty) = (now, now, true);
                }
            }
        } else {
            // Readers see the file as it is now.
            self.getattr(ino)?;
        }
        Ok(self.new_handle(ino, write, flags & flags::APPEND != 0))
    }

    /// Creates and opens a file; returns its attributes and the handle.
    #[allow(clippy::too_many_arguments)]
    pub fn create(&self, parent: Ino, name: &str, mode: u32, flags: i32, uid: u32, gid: u32) -> Result<(Attr, Fh)> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let (gid, _) = self.inherit_gid(parent, gid)?;
        let exists = {
            let d = self.drive();
            !matches!(self.find(&d, &path)?, Found::Nothing) || self.nodes().pending.contains(&path)
        };
        if exists {
            if flags & flags::EXCL != 0 {
                return Err(Errno(libc::EEXIST));
            }
            let attr = self.lookup(parent, name)?;
            let fh = self.open(attr.ino, flags)?;
            return Ok((self.getattr(attr.ino)?, fh));
        }
        let now = SystemTime::now();
        let meta = Meta { mode: mode & 0o7777, uid, gid, mtime: now, ctime: now, atime: now };
        let folder = parent_of(&path).to_owned();
        let file = OpenFile { staged: None, size: 0, meta, dirty: true };
        let ino = {
            let mut nodes = self.nodes();
            let ino = nodes.next;
            nodes.next = Ino(ino.0 + 1);
            let node = Node {
                kind: Kind::File,
                path: Some(path.clone()),
                lookups: 1,
                opens: 0,
                entry: None,
                pending: true,
                file: Some(Arc::new(Mutex::new(file))),
                writers: 1,
            };
            if let Some(old) = nodes.by_path.insert(path.clone(), ino) {
                if let Some(n) = nodes.map.get_mut(&old) {
                    n.path = None;
                }
            }
            nodes.map.insert(ino, node);
            nodes.pending.insert(path);
            ino
        };
        // A name made in the folder: its times move now.
        if self.touch(&[&folder], now) {
            if let Err(e) = self.record_times() {
                tracing::warn!(error = ?e, "recording folder times");
            }
        }
        let fh = self.new_handle(ino, true, flags & flags::APPEND != 0);
        Ok((Attr { ino, kind: Kind::File, size: 0, meta, nlink: 1 }, fh))
    }

    pub fn read(&self, fh: Fh, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_with(fh, offset, len, &mut |d| out = d.to_vec())?;
        Ok(out)
    }

    /// Reads up to `len` bytes at `offset` and hands them to `give` (a reply is written straight
    /// from the read-ahead window, not copied out of it first).
    pub fn read_with(&self, fh: Fh, offset: u64, len: u32, give: &mut dyn FnMut(&[u8])) -> Result<()> {
        let h = self.handle(fh)?;
        let (file, entry) = {
            let nodes = self.nodes();
            let n = nodes.map.get(&h.ino).ok_or(Errno(libc::ENOENT))?;
            (n.file.clone(), n.entry.clone())
        };
        if !h.read.swap(true, Ordering::Relaxed) {
            self.accessed(h.ino);
        }
        if let Some(file) = file {
            let f = lock(&file);
            if let Some(staged) = &f.staged {
                let end = f.size.min(offset.saturating_add(u64::from(len)));
                let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
                staged.read_at(&mut buf, offset)?;
                give(&buf);
                return Ok(());
            }
        }
        let Some(blob) = entry.and_then(|e| e.blob) else {
            give(&[]);
            return Ok(());
        };
        let mut ra = lock(&h.ahead);
        let len = u64::from(len);
        if ra.blob != Some(blob) {
            *ra = ReadAhead { blob: Some(blob), ..ReadAhead::default() };
        }
        let held = ra.start..ra.start + ra.held as u64;
        if offset >= held.start && offset + len <= held.end {
            let from = (offset - held.start) as usize;
            ra.next = offset + len;
            give(&ra.buf[from..from + len as usize]);
            return Ok(());
        }
        // A read where the last one ended starts or continues a sequential run. Within a run,
        // the kernel's own read-ahead sends the next reads at once on several threads, and they
        // arrive out of order: one that lands near where the reader was expected keeps the
        // window (before, each such read reset it to nothing, and a 256 MiB read spent a third
        // of its windows growing it back from 256 KiB). Nearness alone never starts a run: a
        // random reader's reads that fell near its last one fetched whole windows (1,000 reads
        // of 4 KiB brought 204 MB instead of 94).
        let follows = offset == ra.next || offset == held.end;
        let near = |at: u64| at.abs_diff(ra.next) <= REORDER || (at >= held.start && at <= held.end + REORDER);
        let sequential = offset != 0 && (follows || (ra.window > 0 && near(offset)));
        if sequential && offset < held.start {
            // A read behind the buffer, overtaken by the ones after it: read alone.
            give(&self.drive().read_blob(&blob, offset, len)?);
            return Ok(());
        }
        ra.window = if sequential { (ra.window * 2).clamp(256 << 10, MAX_READ_AHEAD) } else { 0 };
        // A read past the buffer's end, whose predecessors are still on their way, fetches from
        // that end: they then find their bytes in the buffer.
        let from = if sequential && ra.held > 0 && offset > held.end { held.end } else { offset };
        let want = (offset + len - from).max(ra.window);
        if want <= len {
            // A read alone (not a window): its own buffer, the window left as it is.
            let data = self.drive().read_blob(&blob, from, want)?;
            ra.next = offset + data.len() as u64;
            give(&data);
            return Ok(());
        }
        let ReadAhead { buf, held, start, next, .. } = &mut *ra;
        if buf.len() < want as usize {
            buf.resize(want as usize, 0);
        }
        // Emptied first: a failed read leaves no window behind.
        *held = 0;
        let n = self.drive().read_blob_into(&blob, from, &mut buf[..want as usize])?;
        (*start, *held) = (from, n);
        let skip = ((offset - from) as usize).min(n);
        let out = &buf[skip..n.min(skip + len as usize)];
        *next = offset + out.len() as u64;
        give(out);
        Ok(())
    }

    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        if !h.write {
            return Err(Errno(libc::EBADF));
        }
        let file = self.nodes().map.get(&h.ino).and_then(|n| n.file.clone()).ok_or(Errno(libc::EBADF))?;
        let mut f = lock(&file);
        self.stage(h.ino, &mut f)?;
        let offset = if h.append { f.size } else { offset };
        let staged = f.staged.as_mut().ok_or(Errno(libc::EIO))?;
        staged.write_at(data, offset, &self.cfg.staging)?;
        f.size = f.size.max(offset + data.len() as u64);
        let now = SystemTime::now();
        (f.meta.mtime, f.meta.ctime, f.dirty) = (now, now, true);
        Ok(data.len())
    }

    /// A `close` of one descriptor: records the file if it changed.
    pub fn flush(&self, fh: Fh) -> Result<()> {
        let h = self.handle(fh)?;
        if h.write {
            self.commit(h.ino)?;
        }
        Ok(())
    }

    /// Records the file if it changed and makes the drive durable.
    pub fn fsync(&self, fh: Fh) -> Result<()> {
        let h = self.handle(fh)?;
        if h.write {
            self.commit(h.ino)?;
        }
        self.drive().flush()?;
        Ok(())
    }

    /// The last close of a handle.
    pub fn release(&self, fh: Fh) -> Result<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else { return Err(Errno(libc::EBADF)) };
        // Its close (`flush`) recorded what it wrote. While another descriptor has the file
        // open for writing, that one's close records the file: this release, which the kernel
        // sends asynchronously, may come after the other truncated it or began to rewrite it,
        // and recorded that half-written state as a version of its own (a file written twice in
        // a row showed a version of 0 bytes between its two).
        let others = h.write && self.nodes().map.get(&h.ino).is_some_and(|n| n.writers > 1);
        let result = if h.write && !others { self.commit(h.ino) } else { Ok(()) };
        // The open count drops before the file state is looked at, so an unlink racing this
        // release (the kernel sends releases asynchronously) sees a closed file and frees it.
        if let Some(n) = self.nodes().map.get_mut(&h.ino) {
            n.opens = n.opens.saturating_sub(1);
        }
        if h.write {
            let closed = self.close_file(h.ino);
            return result.and(closed);
        }
        result
    }

    /// The open state of file `ino`, made if the file is not open for writing, taken as one
    /// more writer ([`Fs::close_file`] gives it back).
    pub(super) fn open_file(&self, ino: Ino) -> Result<Arc<Mutex<OpenFile>>> {
        {
            let mut nodes = self.nodes();
            let node = nodes.map.get_mut(&ino).ok_or(Errno(libc::ENOENT))?;
            if let Some(f) = node.file.clone() {
                node.writers += 1;
                return Ok(f);
            }
        }
        let attr = self.getattr(ino)?;
        let mut nodes = self.nodes();
        let node = nodes.map.get_mut(&ino).ok_or(Errno(libc::ENOENT))?;
        node.writers += 1;
        if let Some(f) = &node.file {
            return Ok(f.clone());
        }
        let f = Arc::new(Mutex::new(OpenFile { staged: None, size: attr.size, meta: attr.meta, dirty: false }));
        node.file = Some(f.clone());
        Ok(f)
    }

    /// Gives back a writer's hold on the open state of a file. The last one records a change
    /// still unrecorded (another holder's, made after that one's own commit) and forgets the
    /// state, unless the change could not be recorded.
    pub(super) fn close_file(&self, ino: Ino) -> Result<()> {
        let file = {
            let mut nodes = self.nodes();
            let Some(n) = nodes.map.get_mut(&ino) else { return Ok(()) };
            n.writers = n.writers.saturating_sub(1);
            if n.writers > 0 {
                return Ok(());
            }
            n.file.clone()
        };
        let Some(file) = file else { return Ok(()) };
        let dirty = lock(&file).dirty;
        let committed = if dirty { self.commit(ino) } else { Ok(()) };
        let keep = lock(&file).dirty;
        let mut nodes = self.nodes();
        if let Some(n) = nodes.map.get_mut(&ino) {
            // Unless a new writer took it meanwhile. A file whose last write could not be
            // recorded keeps its bytes until it can be.
            let same = n.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &file));
            if same && n.writers == 0 && (!keep || n.path.is_none()) {
                n.file = None;
            }
        }
        committed
    }

    /// Copies the file's bytes out of the drive into a staging file, once.
    pub(super) fn stage(&self, ino: Ino, f: &mut OpenFile) -> Result<()> {
        if f.staged.is_some() {
            return Ok(());
        }
        let mut staged = Staged::new(&self.cfg.staging, f.size)?;
        let blob = self.nodes().map.get(&ino).and_then(|n| n.entry.as_ref().and_then(|e| e.blob));
        if let Some(blob) = blob {
            let mut at = 0u64;
            while at < f.size {
                let data = self.drive().read_blob(&blob, at, COPY_BYTES.min(f.size - at))?;
                if data.is_empty() {
                    break;
                }
                staged.write_at(&data, at, &self.cfg.staging)?;
                at += data.len() as u64;
            }
        }
        f.staged = Some(staged);
        Ok(())
    }

    pub(super) fn resize(&self, ino: Ino, f: &mut OpenFile, size: u64) -> Result<()> {
        if size == 0 && f.staged.is_none() {
            f.staged = Some(Staged::Mem(Vec::new()));
        } else {
            if size < f.size && f.staged.is_none() {
                // Only the bytes that stay need copying.
                f.size = size;
            }
            self.stage(ino, f)?;
        }
        if let Some(s) = &mut f.staged {
            s.set_len(size, &self.cfg.staging)?;
        }
        f.size = size;
        Ok(())
    }

    /// Writes a changed file to the drive as one new version.
    pub(super) fn commit(&self, ino: Ino) -> Result<()> {
        let Some(file) = self.nodes().map.get(&ino).and_then(|n| n.file.clone()) else { return Ok(()) };
        let mut f = lock(&file);
        if !f.dirty {
            return Ok(());
        }
        // The file's bytes are chunked, hashed and written to the block log from a snapshot,
        // before taking the drive: only the commit below waits for other writes, and they for it.
        let prepared = match &f.staged {
            Some(staged) => Some(self.drive().prepare_blob(staged.reader(f.size), false)?),
            None => None,
        };
        let mut d = self.drive_mut();
        let (path, old, pending) = {
            let nodes = self.nodes();
            let n = nodes.map.get(&ino).ok_or(Errno(libc::ENOENT))?;
            (n.path.clone(), n.entry.clone(), n.pending)
        };
        let Some(path) = path else {
            // Unlinked: nothing to keep.
            f.dirty = false;
            return Ok(());
        };
        let blob = match (prepared, old.as_ref().and_then(|e| e.blob)) {
            (Some(prepared), _) => d.write_prepared(prepared)?,
            (None, Some(b)) if !pending => b,
            (None, _) => d.write_blob(std::io::empty())?,
        };
        // An access time a read moved on and not yet recorded goes with this change.
        if let Some(t) = lock(&self.atimes).remove(&ino) {
            f.meta.atime = t;
        }
        let metadata = Some(f.meta.to_json(old.as_ref().and_then(|e| e.metadata.as_ref())));
        let entry = Entry { executable: f.meta.mode & 0o111 != 0, linkname: None, blob: Some(blob), metadata };
        d.apply(&[Op::Put(&path, &entry)])?;
        drop(d);
        f.dirty = false;
        let mut nodes = self.nodes();
        nodes.pending.remove(&path);
        if let Some(n) = nodes.map.get_mut(&ino) {
            n.entry = Some(entry);
            n.pending = false;
        }
        Ok(())
    }
}
