//! Directories: listings taken whole and read in pages, their entries' attributes, statfs.

use super::*;
use hyperfs_engine::drive::{Listed, Special};

impl Fs {
    // ---- directories

    /// Takes a listing of a directory, read through the number returned (1..=[`LISTING_IDS`])
    /// until [`Fs::releasedir`].
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        Ok(self.take_listing(ino)?.0)
    }

    /// Takes a listing of a directory, as [`Fs::opendir`], and reads it from `offset` at once
    /// (no newer listings can push it out in between).
    pub fn take_listing_at(&self, ino: Ino, offset: u64) -> Result<(u64, Vec<DirEntry>)> {
        let (fh, list) = self.take_listing(ino)?;
        Ok((fh, Self::page(&list, offset)))
    }

    pub(super) fn take_listing(&self, ino: Ino) -> Result<(u64, Arc<Vec<DirEntry>>)> {
        let (path, with_attrs) = {
            let nodes = self.nodes();
            let n = nodes.map.get(&ino).ok_or(Errno(libc::ENOENT))?;
            if n.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            (n.path.clone().ok_or(Errno(libc::ENOENT))?, nodes.listed.get(&ino) == Some(&true))
        };
        // Names and kinds only. A listing that will carry attributes (see
        // `listing_with_attrs`) keeps each entry as stored, decoded if a `readdirplus` asks.
        let d = self.drive();
        let children = view!(self, d, |v| v.children_with(&path, |value| {
            let kind = if Entry::decode_is_link(value)? { Kind::Symlink } else { Kind::File };
            Ok((kind, with_attrs.then(|| Arc::<[u8]>::from(value))))
        })?);
        let parent_ino = {
            let nodes = self.nodes();
            nodes.by_path.get(parent_of(&path)).copied().unwrap_or(ROOT)
        };
        // The dots come with their attributes, so a listing without attributes (see
        // `listing_with_attrs`) can open with them at once.
        let mut list = vec![
            DirEntry { ino, kind: Kind::Dir, name: ".".into(), attr: self.getattr(ino).ok(), value: None },
            DirEntry {
                ino: parent_ino,
                kind: Kind::Dir,
                name: "..".into(),
                attr: self.getattr(parent_ino).ok(),
                value: None,
            },
        ];
        let mut nodes = self.nodes();
        let prefix = format!("{path}/");
        let pending: Vec<String> = nodes
            .pending
            .range(prefix.clone()..)
            .take_while(|p| p.starts_with(&prefix))
            .filter(|p| !p[prefix.len()..].contains('/'))
            .cloned()
            .collect();
        let mut full = prefix.clone();
        for (name, listed) in children {
            let (kind, value) = match listed {
                Listed::Folder => (Kind::Dir, None),
                Listed::File(listed) => listed,
                Listed::Special((_, value)) => {
                    // Rare: told apart by decoding (its attributes come from a lookup).
                    let e = value.and_then(|v| Entry::decode(&v).ok());
                    let e = match e {
                        Some(e) => Some(e),
                        None => view!(self, d, |v| v.special(&format!("{prefix}{name}")).ok().flatten()),
                    };
                    match e.as_ref().and_then(Special::of) {
                        Some(special) => (Kind::Special(special), None),
                        None => continue,
                    }
                }
            };
            full.truncate(prefix.len());
            full.push_str(&name);
            let ino = nodes.ino_for(&full, kind);
            list.push(DirEntry { ino, kind, name, attr: None, value });
        }
        for p in pending {
            if let Some(&ino) = nodes.by_path.get(&p) {
                if !list.iter().any(|e| e.ino == ino) {
                    list.push(DirEntry {
                        ino,
                        kind: Kind::File,
                        name: p[prefix.len()..].to_owned(),
                        attr: None,
                        value: None,
                    });
                }
            }
        }
        drop(nodes);
        // Numbers of 31 bits, never 0: FUSE hands them back inside directory offsets.
        let fh = self.next_dir.fetch_add(1, Ordering::Relaxed) % LISTING_IDS + 1;
        let mut dirs = lock(&self.dirs);
        if dirs.len() >= LISTINGS_MAX {
            dirs.pop_first();
        }
        let list = Arc::new(list);
        dirs.insert(fh, list.clone());
        Ok((fh, list))
    }

    /// Whether a listing of `dir` starting now should carry every entry's attributes (FUSE
    /// `readdirplus`): once a listing of it was followed by lookups of its entries, as `ls -l`
    /// does (from then on, as the entries' attributes then come with the listing and the
    /// lookups stop). The kernel makes an inode for every entry it is given attributes for,
    /// which made a plain listing eight times slower; folders listed without lookups after,
    /// and the first listing of any folder, go without.
    pub fn listing_with_attrs(&self, dir: Ino) -> bool {
        let mut nodes = self.nodes();
        if nodes.map.get(&dir).is_none_or(|n| n.path.is_none()) {
            return false;
        }
        if nodes.listed.len() >= LISTED_MAX {
            nodes.listed.clear();
        }
        *nodes.listed.entry(dir).or_insert(false)
    }

    /// The attributes of a listed entry, if its name still holds the inode the listing saw:
    /// the listing was taken at `opendir`, and a rename since must not give the kernel a name
    /// for another file's inode.
    pub fn listed_attr(&self, dir: Ino, e: &DirEntry) -> Option<Attr> {
        if e.name == "." || e.name == ".." {
            return self.getattr(e.ino).ok().or(e.attr);
        }
        let path = self.child_path(dir, &e.name).ok()?;
        let open_for_writing = {
            let nodes = self.nodes();
            if nodes.by_path.get(&path).copied() != Some(e.ino) {
                return None;
            }
            nodes.map.get(&e.ino).is_some_and(|n| n.file.is_some())
        };
        match &e.value {
            // One being written here shows its open state instead.
            Some(v) if !open_for_writing => {
                let entry = Entry::decode(v).ok()?;
                if entry.link_id().is_some() {
                    // Several names: its inode and link count come from a lookup.
                    return self.getattr(e.ino).ok();
                }
                let size = self.entry_size(&entry).ok()?;
                Some(Attr { ino: e.ino, kind: e.kind, size, meta: self.entry_meta(&entry, e.kind), nlink: 1 })
            }
            _ => self.getattr(e.ino).ok(),
        }
    }

    /// The listing `fh` (from [`Fs::opendir`]) from position `offset`; `EBADF` once it was
    /// released or made way for newer ones.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let list = lock(&self.dirs).get(&fh).cloned().ok_or(Errno(libc::EBADF))?;
        Ok(Self::page(&list, offset))
    }

    /// At most what one reply can hold (a page of the shortest entries), from `offset`.
    pub(super) fn page(list: &[DirEntry], offset: u64) -> Vec<DirEntry> {
        list.iter().skip(offset as usize).take(READDIR_MAX).cloned().collect()
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    pub fn statfs(&self) -> Result<Statfs> {
        let path =
            std::ffi::CString::new(self.cfg.staging.as_os_str().as_encoded_bytes()).map_err(|_| Errno(libc::EIO))?;
        // SAFETY: statvfs is plain data; the call only writes into it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `st` a valid statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(Errno::from(std::io::Error::last_os_error()));
        }
        Ok(Statfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: NAME_MAX as u32,
            frsize: st.f_frsize as u32,
        })
    }
}
