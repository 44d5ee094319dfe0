//! Changing the tree: folders, symlinks, unlink, rmdir, rename and exchange.

use super::*;

impl Fs {
    // ---- changing the tree

    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let (gid, setgid) = self.inherit_gid(parent, gid)?;
        let now = SystemTime::now();
        let meta = Meta { mode: (mode & 0o7777) | setgid, uid, gid, mtime: now, ctime: now };
        {
            let mut d = self.drive_mut();
            if !matches!(self.find(&d, &path)?, Found::Nothing) || self.nodes().pending.contains(&path) {
                return Err(Errno(libc::EEXIST));
            }
            let e = Entry { executable: false, linkname: None, blob: None, metadata: Some(meta.to_json(None)) };
            d.apply(&[Op::Mkdir(&path, &e)])?;
        }
        self.lookup(parent, name)
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &str, uid: u32, gid: u32) -> Result<Attr> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let (gid, _) = self.inherit_gid(parent, gid)?;
        let now = SystemTime::now();
        let meta = Meta { mode: 0o777, uid, gid, mtime: now, ctime: now };
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
            d.apply(&[Op::Put(&path, &e)])?;
        }
        self.lookup(parent, name)
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        self.writable()?;
        let path = self.child_path(parent, name)?;
        let mut d = self.drive_mut();
        let pending = self.nodes().pending.contains(&path);
        // A stored entry is removed without being decoded (a damaged one too).
        if view!(self, d, |v| v.exists(&path)?) {
            let keep = self.keep_parent(&d, &path, None)?;
            let mut ops = vec![Op::Del(&path)];
            if let Some((p, e)) = &keep {
                ops.push(Op::Mkdir(p, e));
            }
            d.apply(&ops)?;
        } else if !pending {
            return Err(Errno(if matches!(self.find(&d, &path)?, Found::Dir(_)) {
                libc::EISDIR
            } else {
                libc::ENOENT
            }));
        }
        self.detach(&path);
        Ok(())
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
        d.apply(&ops)?;
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
        let mut ops: Vec<Op<'_>> = Vec::new();
        match (&dst, src_dir) {
            (Found::Dir(_), false) => return Err(Errno(libc::EISDIR)),
            (Found::File(..) | Found::Symlink(_), true) => return Err(Errno(libc::ENOTDIR)),
            (Found::Dir(_), true) => {
                if !self.is_empty_dir(&d, &to)? {
                    return Err(Errno(libc::ENOTEMPTY));
                }
                ops.push(Op::Rmdir(&to));
            }
            (Found::File(..) | Found::Symlink(_), false) if src_pending => ops.push(Op::Del(&to)),
            _ => {}
        }
        if !src_pending {
            ops.push(Op::Rename(&from, &to));
        }
        let keep = if parent_of(&from) != parent_of(&to) { self.keep_parent(&d, &from, Some(&to))? } else { None };
        if let Some((p, e)) = &keep {
            ops.push(Op::Mkdir(p, e));
        }
        if !ops.is_empty() {
            d.apply(&ops)?;
        }
        self.move_nodes(&from, &to);
        Ok(())
    }

    /// `RENAME_EXCHANGE` of two files or symlinks (directories: `EINVAL`).
    pub(super) fn exchange(
        &self,
        d: &mut Drive,
        from: &str,
        src: Found,
        to: &str,
        dst: Found,
        pending: bool,
    ) -> Result<()> {
        let entry = |f: Found| match f {
            Found::File(e, _) | Found::Symlink(e) => Ok(e),
            Found::Nothing => Err(Errno(libc::ENOENT)),
            Found::Dir(_) => Err(Errno(libc::EINVAL)),
        };
        if pending {
            // A file not yet written has no entry to swap; it is written first by its close.
            return Err(Errno(libc::EBUSY));
        }
        let (a, b) = (entry(src)?, entry(dst)?);
        d.apply(&[Op::Put(to, &a), Op::Put(from, &b)])?;
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
