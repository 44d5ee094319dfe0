//! Reads of one version of a drive's tree: entries, listings, walks.

use super::*;

/// Reads of one version of a drive: the current one ([`Drive::view`]) or a past one
/// ([`Drive::checkout`]). Contents are read from the drive's blobs core, which only grows.
pub struct DriveView<'a, B: Blocks> {
    pub(super) db: View<B>,
    pub(super) drive: &'a Drive,
}

impl<B: Blocks> DriveView<'_, B> {
    /// The version this view reads.
    pub fn version(&self) -> u64 {
        self.db.version()
    }

    /// The entry at `path` and the db block that wrote it.
    pub fn entry(&self, path: &str) -> Result<Option<(u64, Entry)>> {
        let path = path::file(path)?;
        match self.db.get(&key_in(FILES, &path))? {
            Some(e) => Ok(Some((e.seq, Entry::decode(&e.value)?))),
            None => Ok(None),
        }
    }

    /// Whether sub-database `prefix` (`special` or `links`) holds anything in this version,
    /// remembered by the drive per (fork, version).
    /// Whether this version holds any file or symlink.
    pub fn has_files(&self) -> Result<bool> {
        self.holds_any(FILES)
    }

    pub(super) fn holds_any(&self, prefix: &'static [u8]) -> Result<bool> {
        let at = (self.drive.db.core().fork(), self.db.version(), prefix);
        if let Some(any) = self.drive.spaces.lock().unwrap_or_else(|e| e.into_inner()).get(at) {
            return Ok(any);
        }
        let mut upper = prefix.to_vec();
        if let Some(last) = upper.last_mut() {
            *last += 1;
        }
        let range = Range {
            lower: Bound::Excluded(prefix.to_vec()),
            upper: Bound::Excluded(upper),
            limit: Some(1),
            ..Range::default()
        };
        let any = self.db.range(&range).next().transpose()?.is_some();
        self.drive.spaces.lock().unwrap_or_else(|e| e.into_inner()).insert(at, any);
        Ok(any)
    }

    /// The special file (FIFO, socket, device) recorded at `path`.
    pub fn special(&self, path: &str) -> Result<Option<Entry>> {
        if !self.holds_any(SPECIAL)? {
            return Ok(None);
        }
        match self.db.get(&key_in(SPECIAL, &path::file(path)?))? {
            Some(e) => Ok(Some(Entry::decode(&e.value)?)),
            None => Ok(None),
        }
    }

    /// The names of hard-link group `id` (see [`super::links`]); none for a file with one name.
    pub fn link_names(&self, id: &str) -> Result<Vec<String>> {
        links::read_record(&self.db, id)
    }

    /// How many names the file whose entry is `e` has: its group's, if the group lists `path`.
    pub fn nlink(&self, path: &str, e: &Entry) -> Result<u32> {
        let Some(id) = e.link_id() else { return Ok(1) };
        let names = self.link_names(id)?;
        let path = path::file(path)?;
        Ok(if names.contains(&path) { names.len() as u32 } else { 1 })
    }

    /// Whether a file or symlink entry is stored at `path` (read, not decoded: a damaged entry
    /// still exists, and can be removed).
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.db.get(&key_in(FILES, &path::file(path)?))?.is_some())
    }

    /// The file or symlink entry stored at `path`, as stored (not decoded: a damaged entry still
    /// exists, and can be removed).
    pub fn stored_entry(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(&key_in(FILES, &path::file(path)?))?.map(|e| e.value))
    }

    /// The entry at `path` with the size of its file.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        let Some((seq, entry)) = self.entry(path)? else { return Ok(None) };
        let size = match &entry.blob {
            None => 0,
            Some(b) => self.drive.blob_size(b)?,
        };
        Ok(Some(Stat { seq, entry, size }))
    }

    /// The whole content of the file at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(stat) = self.stat(path)? else { return Ok(None) };
        match &stat.entry.blob {
            None => Ok(Some(Vec::new())),
            Some(b) => self.drive.read_blob(b, 0, stat.size).map(Some),
        }
    }

    /// Up to `len` bytes of the file at `path` from byte `offset` (fewer at its end).
    pub fn read(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let stat = self.stat(path)?.ok_or_else(|| Error::InvalidRequest(format!("no file at {path}")))?;
        match &stat.entry.blob {
            None => Ok(Vec::new()),
            Some(b) => self.drive.read_blob(b, offset, len),
        }
    }

    /// Every file and symlink under `folder`, recursively, in path order. Entries whose stored
    /// path is not a plain one ([`path::check_stored`]) are left out; [`DriveView::walk`] says why.
    pub fn list(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        self.stored(FILES, folder, |_, _| ())
    }

    /// Every directory record under `folder`, recursively, in path order (not `folder`'s own:
    /// see [`DriveView::dir_entry`]), invalid paths left out as by [`DriveView::list`].
    pub fn list_dirs(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        self.stored(DIRS, folder, |_, _| ())
    }

    /// Everything under `folder` that can be laid out as a tree of files: directory records and
    /// file and symlink entries, in path order, and what cannot — a path that is not a plain one
    /// ([`path::check_stored`]), an entry that does not decode, an entry or record below a file
    /// or symlink entry (following a link entry to write below it would write wherever it
    /// points) — each with the reason. Nothing rejected is followed by `export`, `clone` or the
    /// mount.
    pub fn walk(&self, folder: &str) -> Result<Walk> {
        let mut rejected = Vec::new();
        let mut files = self.stored(FILES, folder, |p, why| rejected.push(Rejected { path: p, why }))?;
        let mut dirs = self.stored(DIRS, folder, |p, why| rejected.push(Rejected { path: p, why }))?;
        let mut specials = if self.holds_any(SPECIAL)? {
            self.stored(SPECIAL, folder, |p, why| rejected.push(Rejected { path: p, why }))?
        } else {
            Vec::new()
        };
        specials.retain(|(p, e)| {
            let known = Special::of(e).is_some();
            if !known {
                rejected.push(Rejected { path: printable(p), why: "a special file of no known type".into() });
            }
            known
        });
        // Following a link entry (or a file) to write below it would write wherever it points.
        let leaves: std::collections::HashSet<String> = files.iter().map(|(p, _)| p.clone()).collect();
        let below_leaf = |p: &str| {
            std::path::Path::new(p).ancestors().skip(1).any(|a| a.to_str().is_some_and(|a| leaves.contains(a)))
        };
        for (list, what) in
            [(&mut files, "an entry"), (&mut dirs, "a folder record"), (&mut specials, "a special file")]
        {
            list.retain(|(p, _)| {
                let keep = !below_leaf(p);
                if !keep {
                    rejected
                        .push(Rejected { path: printable(p), why: format!("{what} below a file or symlink entry") });
                }
                keep
            });
        }
        Ok(Walk { files, dirs, specials, rejected })
    }

    /// The entries of sub-database `prefix` under `folder` whose paths are plain and whose values
    /// decode; `reject` hears of the others (the path made printable, and why).
    fn stored(
        &self,
        prefix: &[u8],
        folder: &str,
        mut reject: impl FnMut(String, String),
    ) -> Result<Vec<(String, Entry)>> {
        let folder = path::folder(folder)?;
        let mut out = Vec::new();
        let mut it = self.db.range(&under(prefix, &folder, "/"));
        while let Some(next) = it.next_block() {
            let (_, block) = next?;
            let raw = it.key_of(&block).get(prefix.len()..).unwrap_or_default();
            let p = match path::check_stored(raw) {
                Ok(p) => p,
                Err(why) => {
                    reject(printable(&String::from_utf8_lossy(raw)), why.to_string());
                    continue;
                }
            };
            match Entry::decode(block.value.as_deref().unwrap_or_default()) {
                Ok(e) => out.push((p.to_owned(), e)),
                Err(e) => reject(printable(p), format!("the entry does not decode: {e}")),
            }
        }
        Ok(out)
    }

    /// The names directly inside `folder` (files, folders, empty folders). Without empty
    /// folders the order is JS's (key order); with them, names are sorted.
    pub fn readdir(&self, folder: &str) -> Result<Vec<String>> {
        let folder = path::folder(folder)?;
        let mut names = self.children_names(FILES, &folder)?;
        let mut dirs = self.children_names(DIRS, &folder)?;
        if self.holds_any(SPECIAL)? {
            dirs.extend(self.children_names(SPECIAL, &folder)?);
        }
        if !dirs.is_empty() {
            names.extend(dirs);
            names.sort();
            names.dedup();
        }
        Ok(names)
    }

    /// The directory record at `path` (its attributes; the root's too), if one was written.
    pub fn dir_entry(&self, path: &str) -> Result<Option<Entry>> {
        match self.db.get(&dir_key(path)?)? {
            Some(e) => Ok(Some(Entry::decode(&e.value)?)),
            None => Ok(None),
        }
    }

    /// The names directly inside `folder` with their entries (`None` for folders), sorted.
    pub fn children(&self, folder: &str) -> Result<Vec<Child>> {
        let children = self.children_with(folder, Entry::decode)?;
        Ok(children
            .into_iter()
            .map(|(name, listed)| match listed {
                Listed::Folder => Child { name, entry: None, special: false },
                Listed::File(e) => Child { name, entry: Some(e), special: false },
                Listed::Special(e) => Child { name, entry: Some(e), special: true },
            })
            .collect())
    }

    /// [`DriveView::children`] with what `f` makes of each entry's value as stored, uncopied
    /// and undecoded: a listing that needs only names and kinds (see
    /// [`Entry::decode_is_link`]) skips the decoding and the copies.
    pub fn children_with<T>(
        &self,
        folder: &str,
        mut f: impl FnMut(&[u8]) -> Result<T>,
    ) -> Result<Vec<(String, Listed<T>)>> {
        let folder = path::folder(folder)?;
        let listed = |v: Option<T>| v.map_or(Listed::Folder, Listed::File);
        let mut out: Vec<_> = self.shallow(FILES, &folder, &mut f)?.into_iter().map(|(n, v)| (n, listed(v))).collect();
        let dirs = self.shallow(DIRS, &folder, |_| Ok(()))?;
        let specials = if self.holds_any(SPECIAL)? { self.shallow(SPECIAL, &folder, &mut f)? } else { Vec::new() };
        if !dirs.is_empty() || !specials.is_empty() {
            out.extend(dirs.into_iter().map(|(name, _)| (name, Listed::Folder)));
            out.extend(specials.into_iter().map(|(name, v)| (name, v.map_or(Listed::Folder, Listed::Special))));
            // A name that is a file and something else shows as the file, a special file and a
            // folder as the special file.
            let rank = |l: &Listed<T>| match l {
                Listed::File(_) => 0,
                Listed::Special(_) => 1,
                Listed::Folder => 2,
            };
            out.sort_by(|a, b| a.0.cmp(&b.0).then(rank(&a.1).cmp(&rank(&b.1))));
            out.dedup_by(|b, a| a.0 == b.0);
        }
        Ok(out)
    }

    /// Whether `path` is a directory: it holds entries or is a recorded empty directory.
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        let folder = path::folder(path)?;
        Ok(folder.is_empty() || self.db.get(&key_in(DIRS, &folder))?.is_some() || self.holds_entries(&folder)?)
    }

    /// `path` as a directory: `Some` with its record ([`DriveView::dir_entry`]) if it is one
    /// (the root and a directory that exists through its entries may have none), `None` if not.
    pub fn dir(&self, path: &str) -> Result<Option<Option<Entry>>> {
        let folder = path::folder(path)?;
        if folder.is_empty() {
            return Ok(Some(self.dir_entry("/")?));
        }
        if let Some(e) = self.db.get(&key_in(DIRS, &folder))? {
            return Ok(Some(Some(Entry::decode(&e.value)?)));
        }
        Ok(self.holds_entries(&folder)?.then_some(None))
    }

    /// Whether anything is stored under `folder`.
    fn holds_entries(&self, folder: &str) -> Result<bool> {
        for prefix in [FILES, DIRS, SPECIAL] {
            if prefix == SPECIAL && !self.holds_any(SPECIAL)? {
                continue;
            }
            let range = Range { limit: Some(1), ..under(prefix, folder, "/") };
            if self.db.range(&range).next().transpose()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The names directly inside `folder`.
    fn children_names(&self, prefix: &[u8], folder: &str) -> Result<Vec<String>> {
        Ok(self.shallow(prefix, folder, |_| Ok(()))?.into_iter().map(|(n, _)| n).collect())
    }

    /// A shallow listing in Hyperdrive's order, from one range read that starts again past each
    /// sub-folder (files of a folder are neighbours in the tree; Hyperdrive's fresh descent per
    /// name cost a folder of a hundred files a hundred descents). Each name comes with the value
    /// stored at `folder/name`, or `None` for a sub-folder.
    fn shallow<T>(
        &self,
        prefix: &[u8],
        folder: &str,
        mut f: impl FnMut(&[u8]) -> Result<T>,
    ) -> Result<Vec<(String, Option<T>)>> {
        let mut names: Vec<(String, Option<T>)> = Vec::new();
        let mut range = under(prefix, folder, "/");
        // Keys are `prefix ‖ folder/ ‖ rest`: the name is `rest` up to its first slash.
        'ranges: loop {
            let mut it = self.db.range(&range);
            while let Some(next) = it.next_block() {
                let (_, block) = next?;
                // A key that is not a plain path is never shown ([`path::check_stored`]).
                let key = it.key_of(&block);
                let Ok(rest) = path::check_stored(key.get(prefix.len()..).unwrap_or_default())
                    .map(|p| p.get(folder.len() + 1..).unwrap_or_default())
                else {
                    continue;
                };
                match rest.find('/') {
                    None => names.push((rest.to_owned(), Some(f(block.value.as_deref().unwrap_or_default())?))),
                    Some(i) => {
                        let name = &rest[..i];
                        if names.last().map(|(n, _)| n.as_str()) != Some(name) {
                            names.push((name.to_owned(), None));
                        }
                        // Everything under the sub-folder is skipped: on from `name0`, which
                        // JS skips too (a file of that name beside the folder went unlisted).
                        range.lower = Bound::Included(key_in(prefix, &format!("{folder}/{name}0")));
                        continue 'ranges;
                    }
                }
            }
            return Ok(names);
        }
    }
}

/// What one name of a listing ([`DriveView::children_with`]) is.
#[derive(Debug, Clone)]
pub enum Listed<T> {
    /// A folder (recorded, or there through what is inside it).
    Folder,
    /// A file or symlink entry.
    File(T),
    /// A special file (FIFO, socket, device node).
    Special(T),
}

/// What [`DriveView::walk`] finds under a folder.
#[derive(Debug, Default)]
pub struct Walk {
    /// File and symlink entries, by path, in path order.
    pub files: Vec<(String, Entry)>,
    /// Directory records, by path, in path order.
    pub dirs: Vec<(String, Entry)>,
    /// Special files (FIFOs, sockets, devices) of a known type, by path, in path order.
    pub specials: Vec<(String, Entry)>,
    /// What cannot be laid out as a tree, and why.
    pub rejected: Vec<Rejected>,
}

/// An entry of a drive that is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The stored path, with control characters escaped ([`printable`]).
    pub path: String,
    /// Why it is not used.
    pub why: String,
}

/// `s` with control characters and bidirectional overrides escaped (`\n`, `\x1b`, `\u{202e}`)
/// and backslashes doubled, for a terminal: names and link targets from a drive are someone
/// else's bytes, and raw escape sequences would drive the user's terminal or disguise a name.
pub fn printable(s: &str) -> String {
    let odd = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(|c| odd(c) || c == '\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if odd(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
