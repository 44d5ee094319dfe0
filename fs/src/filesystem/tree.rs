//! Changing the tree: folders, symlinks, unlink, rmdir, rename and exchange.

use super::*;
use hyperfs_engine::drive::Special;

impl Fs {
    // ---- changing the tree

    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let (gid, setgid) = self.inherit_gid(parent, gid)?;
        let now = SystemTime::now();
        let meta = Meta { mode: (mode & 0o7777) | setgid, uid, gid, mtime: now, ctime: now, atime: now };
        {
            let mut d = self.drive_mut();
            if !matches!(self.find(&d, &path)?, Found::Nothing) || self.nodes().pending.contains(&path) {
                return Err(Errno(libc::EEXIST));
            }
            let e = Entry { executable: false, linkname: None, blob: None, metadata: Some(meta.to_json(None)) };
            self.apply_in(&mut d, &[Op::Mkdir(&path, &e)], &[parent_of(&path)])?;
        }
        self.lookup(parent, name)
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &str, uid: u32, gid: u32) -> Result<Attr> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let (gid, _) = self.inherit_gid(parent, gid)?;
        let now = SystemTime::now();
        let meta = Meta { mode: 0o777, uid, gid, mtime: now, ctime: now, atime: now };
        {
            let mut d = self.drive_mut();
            if !matches!(self.find(&d, &path)?, Found::Nothing) || self.nodes().pending.contains(&path) {
                return Err(Errno(libc::EEXIST));
            }
            let e = Entry {
                executable: false,
                linkname: Some(target.to_owned()),
                blob: None,
                metadata: Some(meta.to_json(None)),
            };
            self.apply_in(&mut d, &[Op::Put(&path, &e)], &[parent_of(&path)])?;
        }
        self.lookup(parent, name)
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let mut d = self.drive_mut();
        let pending = self.nodes().pending.contains(&path);
        // A stored entry is removed without being decoded (a damaged one too).
        let stored = view!(self, d, |v| v.stored_entry(&path)?);
        let file = stored.is_some();
        let special = if file { None } else { view!(self, d, |v| v.special(&path).ok().flatten()) };
        let mut other = None;
        if file || special.is_some() {
            // The file's other names keep it, with the link count (a metadata change) newer.
            // Only an entry that may name a group is decoded.
            let entry = match (&special, &stored) {
                (Some(e), _) => Some(e.clone()),
                (None, Some(raw)) if Entry::link_id_of(raw).is_some() => Entry::decode(raw).ok(),
                _ => None,
            };
            let survivor = match &entry {
                Some(e) => self.survivor(&d, e, &path, &path, SystemTime::now())?,
                None => None,
            };
            other = survivor.as_ref().map(|(p, _)| p.clone());
            let keep = self.keep_parent(&d, &path, None)?;
            let mut ops = vec![if file { Op::Del(&path) } else { Op::DelSpecial(&path) }];
            if let Some((p, e)) = &survivor {
                ops.push(if file { Op::Put(p, e) } else { Op::Mknod(p, e) });
            }
            if let Some((p, e)) = &keep {
                ops.push(Op::Mkdir(p, e));
            }
            self.apply_in(&mut d, &ops, &[parent_of(&path)])?;
        } else if !pending {
            return Err(Errno(if matches!(self.find(&d, &path)?, Found::Dir(_)) {
                libc::EISDIR
            } else {
                libc::ENOENT
            }));
        }
        self.nodes().unlink_name(&path, other.as_deref());
        Ok(())
    }

    /// Makes a FIFO, socket or device node (`mode` carries the type, `rdev` a device's number).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(&self, parent: Ino, name: &str, mode: u32, rdev: u64, uid: u32, gid: u32) -> Result<Attr> {
        self.writable()?;
        let special = match mode & libc::S_IFMT {
            libc::S_IFIFO => Special::Fifo,
            libc::S_IFSOCK => Special::Socket,
            libc::S_IFCHR => Special::Char(rdev),
            libc::S_IFBLK => Special::Block(rdev),
            _ => return Err(Errno(libc::EINVAL)),
        };
        let path = self.child_path(parent, name)?;
        let (gid, _) = self.inherit_gid(parent, gid)?;
        let now = SystemTime::now();
        let meta = Meta { mode: mode & 0o7777, uid, gid, mtime: now, ctime: now, atime: now };
        {
            let mut d = self.drive_mut();
            if !matches!(self.find(&d, &path)?, Found::Nothing) || self.nodes().pending.contains(&path) {
                return Err(Errno(libc::EEXIST));
            }
            let metadata = Some(special.to_json(meta.to_json(None)));
            let e = Entry { executable: false, linkname: None, blob: None, metadata };
            self.apply_in(&mut d, &[Op::Mknod(&path, &e)], &[parent_of(&path)])?;
        }
        self.lookup(parent, name)
    }

    /// Gives file `ino` (a file, symlink or special file) the further name `new_name`.
    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> Result<Attr> {
        self.writable()?;
        let to = self.child_path(new_parent, new_name)?;
        let (kind, pending, open) = {
            let nodes = self.nodes();
            let n = nodes.map.get(&ino).ok_or(Errno(libc::ENOENT))?;
            (n.kind, n.pending, n.file.is_some())
        };
        if kind == Kind::Dir {
            return Err(Errno(libc::EPERM));
        }
        if pending || open {
            // A file being written is recorded first: the new name shows what the old one does.
            self.commit(ino)?;
        }
        let from = self.nodes().map.get(&ino).and_then(|n| n.path.clone()).ok_or(Errno(libc::ENOENT))?;
        let (id, linked) = {
            let mut d = self.drive_mut();
            if !matches!(self.find(&d, &to)?, Found::Nothing) || self.nodes().pending.contains(&to) {
                return Err(Errno(libc::EEXIST));
            }
            let (e, special) = match self.find(&d, &from)? {
                Found::File(e, _) | Found::Symlink(e) => (e, false),
                Found::Special(e) => (e, true),
                Found::Dir(_) => return Err(Errno(libc::EPERM)),
                Found::Nothing => return Err(Errno(libc::ENOENT)),
            };
            if view!(self, d, |v| v.nlink(&from, &e)?) as usize >= hyperfs_engine::drive::links::MAX_LINKS {
                return Err(Errno(libc::EMLINK));
            }
            // A new name is a change of the file's metadata (its link count): ctime moves.
            let now = SystemTime::now();
            let e = self.restamped(Some(&e), kind, |m| m.ctime = now);
            let put = if special { Op::Mknod(&from, &e) } else { Op::Put(&from, &e) };
            self.apply_in(&mut d, &[put, Op::Link(&from, &to)], &[parent_of(&to)])?;
            let linked = match self.find(&d, &from)? {
                Found::File(e, _) | Found::Symlink(e) | Found::Special(e) => e,
                _ => return Err(Errno(libc::EIO)),
            };
            (linked.link_id().ok_or(Errno(libc::EIO))?.to_owned(), linked)
        };
        {
            let mut nodes = self.nodes();
            nodes.by_link.insert(id.clone(), ino);
            nodes.linked(&id, &to, kind);
            if let Some(n) = nodes.map.get_mut(&ino) {
                // A commit of the open file keeps the group it now belongs to.
                n.entry = Some(linked);
            }
        }
        self.lookup(new_parent, new_name)
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let mut d = self.drive_mut();
        match self.find(&d, &path)? {
            Found::Dir(_) => {}
            Found::Nothing => return Err(Errno(libc::ENOENT)),
            _ => return Err(Errno(libc::ENOTDIR)),
        }
        if !self.is_empty_dir(&d, &path)? {
            return Err(Errno(libc::ENOTEMPTY));
        }
        let keep = self.keep_parent(&d, &path, None)?;
        let mut ops = vec![Op::Rmdir(&path)];
        if let Some((p, e)) = &keep {
            ops.push(Op::Mkdir(p, e));
        }
        self.apply_in(&mut d, &ops, &[parent_of(&path)])?;
        drop(d);
        self.detach(&path);
        Ok(())
    }

    pub fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, flags: u32) -> Result<()> {
        self.writable()?;
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if flags & !(flags::RENAME_NOREPLACE | flags::RENAME_EXCHANGE) != 0
            || flags == flags::RENAME_NOREPLACE | flags::RENAME_EXCHANGE
        {
            return Err(Errno(libc::EINVAL));
        }
        let mut d = self.drive_mut();
        let (src_pending, dst_pending) = {
            let nodes = self.nodes();
            (nodes.pending.contains(&from), nodes.pending.contains(&to))
        };
        let src = self.find(&d, &from)?;
        let dst = self.find(&d, &to)?;
        let src_exists = src_pending || !matches!(src, Found::Nothing);
        let dst_exists = dst_pending || !matches!(dst, Found::Nothing);
        if !src_exists {
            return Err(Errno(libc::ENOENT));
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Errno(libc::EINVAL));
        }
        if flags & flags::RENAME_NOREPLACE != 0 && dst_exists {
            return Err(Errno(libc::EEXIST));
        }
        if flags & flags::RENAME_EXCHANGE != 0 {
            return self.exchange(&mut d, &from, src, &to, dst, src_pending || dst_pending);
        }
        let src_dir = matches!(src, Found::Dir(_));
        let src_special = matches!(src, Found::Special(_));
        let mut ops: Vec<Op<'_>> = Vec::new();
        match (&dst, src_dir) {
            (Found::Dir(_), false) => return Err(Errno(libc::EISDIR)),
            (Found::File(..) | Found::Symlink(_) | Found::Special(_), true) => return Err(Errno(libc::ENOTDIR)),
            (Found::Dir(_), true) => {
                if !self.is_empty_dir(&d, &to)? {
                    return Err(Errno(libc::ENOTEMPTY));
                }
                ops.push(Op::Rmdir(&to));
            }
            // What the move does not write over (another sub-database's key) goes first.
            (Found::Special(_), false) if !src_special => ops.push(Op::DelSpecial(&to)),
            (Found::File(..) | Found::Symlink(_), false) if src_pending || src_special => ops.push(Op::Del(&to)),
            _ => {}
        }
        // A rename changes the moved inode's ctime, as on Linux's local file systems: a file is
        // written under its new name with it (and so are its other names), a folder's record too.
        let now = SystemTime::now();
        let moved = match &src {
            _ if src_pending => None,
            Found::File(e, _) | Found::Special(e) => Some(self.restamped(Some(e), Kind::File, |m| m.ctime = now)),
            Found::Symlink(e) => Some(self.restamped(Some(e), Kind::Symlink, |m| m.ctime = now)),
            Found::Dir(record) => Some(self.restamped(record.as_ref(), Kind::Dir, |m| m.ctime = now)),
            Found::Nothing => None,
        };
        match (&moved, src_dir) {
            (None, _) => {}
            (Some(e), true) => {
                ops.push(Op::Rename(&from, &to));
                ops.push(Op::Mkdir(&to, e));
            }
            (Some(e), false) if src_special => {
                ops.push(Op::DelSpecial(&from));
                ops.push(Op::Mknod(&to, e));
            }
            (Some(e), false) => {
                ops.push(Op::Del(&from));
                ops.push(Op::Put(&to, e));
            }
        }
        // A file put over loses a name: its other names (if any) show the new link count and ctime.
        let survivor = match &dst {
            Found::File(e, _) | Found::Symlink(e) | Found::Special(e) => self.survivor(&d, e, &to, &from, now)?,
            _ => None,
        };
        if let Some((p, e)) = &survivor {
            ops.push(if matches!(dst, Found::Special(_)) { Op::Mknod(p, e) } else { Op::Put(p, e) });
        }
        let keep = if parent_of(&from) != parent_of(&to) { self.keep_parent(&d, &from, Some(&to))? } else { None };
        if let Some((p, e)) = &keep {
            ops.push(Op::Mkdir(p, e));
        }
        self.apply_in(&mut d, &ops, &[parent_of(&from), parent_of(&to)])?;
        drop(d);
        self.move_nodes(&from, &to, survivor.as_ref().map(|(p, _)| p.as_str()));
        if let Some(e) = moved.filter(|_| !src_dir) {
            let mut nodes = self.nodes();
            if let Some(n) = nodes.by_path.get(&to).copied().and_then(|ino| nodes.map.get_mut(&ino)) {
                n.entry = Some(e);
            }
        }
        Ok(())
    }

    /// `RENAME_EXCHANGE` of two files or symlinks (directories: `EINVAL`).
    pub(super) fn exchange(
        &self,
        d: &mut Changing<'_>,
        from: &str,
        src: Found,
        to: &str,
        dst: Found,
        pending: bool,
    ) -> Result<()> {
        let entry = |f: Found| match f {
            Found::File(e, _) | Found::Symlink(e) => Ok((e, false)),
            Found::Special(e) => Ok((e, true)),
            Found::Nothing => Err(Errno(libc::ENOENT)),
            Found::Dir(_) => Err(Errno(libc::EINVAL)),
        };
        if pending {
            // A file not yet written has no entry to swap; it is written first by its close.
            return Err(Errno(libc::EBUSY));
        }
        let ((a, a_special), (b, b_special)) = (entry(src)?, entry(dst)?);
        let mut ops = Vec::new();
        if a_special != b_special {
            // Each name changes sub-database: its old key goes.
            ops.push(if a_special { Op::DelSpecial(from) } else { Op::Del(from) });
            ops.push(if b_special { Op::DelSpecial(to) } else { Op::Del(to) });
        }
        ops.push(if a_special { Op::Mknod(to, &a) } else { Op::Put(to, &a) });
        ops.push(if b_special { Op::Mknod(from, &b) } else { Op::Put(from, &b) });
        self.apply_in(d, &ops, &[parent_of(from), parent_of(to)])?;
        let mut nodes = self.nodes();
        let ia = nodes.by_path.remove(from);
        let ib = nodes.by_path.remove(to);
        for (ino, path) in [(ia, to), (ib, from)] {
            if let Some(ino) = ino {
                nodes.by_path.insert(path.to_owned(), ino);
                if let Some(n) = nodes.map.get_mut(&ino) {
                    n.path = Some(path.to_owned());
                }
            }
        }
        Ok(())
    }
}
