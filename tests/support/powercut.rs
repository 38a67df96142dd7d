//! A power cut for SQLite files, and a failing disk: a VFS shim over the operating system's
//! (`unix`) that remembers, for each file under a watched directory, what a
//! power cut would leave of it — the bytes as of that file's last `fsync`.
//! Writes reach the real file as usual (so the process sees them, as it sees
//! its page cache), and are replayed onto the durable image only when a
//! handle of that file is synced (`fsync` flushes the whole inode, whichever
//! descriptor asks).
//!
//! The shim is registered once per test process as the default VFS. Files
//! outside a watched directory go straight to `unix`, untouched and
//! unrecorded, so the other tests of the binary see no difference. Memory
//! mapped reads are off for watched files (the shim's methods are version 2,
//! without `xFetch`): SQLite then reads them through `xRead`.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::ffi;

/// What happened to a file since its last sync.
enum Op {
    Write(i64, Vec<u8>),
    Truncate(i64),
}

/// One file's durable bytes and the operations not yet synced.
#[derive(Default)]
struct FileState {
    durable: Vec<u8>,
    pending: Vec<Op>,
}

impl FileState {
    fn sync(&mut self) {
        for op in self.pending.drain(..) {
            match op {
                Op::Write(at, data) => {
                    let at = at as usize;
                    if self.durable.len() < at + data.len() {
                        self.durable.resize(at + data.len(), 0);
                    }
                    self.durable[at..at + data.len()].copy_from_slice(&data);
                }
                Op::Truncate(size) => self.durable.truncate(size as usize),
            }
        }
    }
}

/// The watched directories and their files.
#[derive(Default)]
struct Watched {
    dirs: Vec<PathBuf>,
    files: HashMap<PathBuf, Arc<Mutex<FileState>>>,
    /// Watched directories whose writes and syncs fail, with the error.
    failing: HashMap<PathBuf, c_int>,
}

fn watched() -> &'static Mutex<Watched> {
    static WATCHED: OnceLock<Mutex<Watched>> = OnceLock::new();
    WATCHED.get_or_init(Mutex::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory whose SQLite files lose what was not synced at a power cut.
pub struct Disk {
    dir: PathBuf,
}

impl Disk {
    /// Watches `dir` from now on (open no database there before).
    pub fn watch(dir: &Path) -> Disk {
        register();
        let dir = dir.canonicalize().unwrap();
        lock(watched()).dirs.push(dir.clone());
        Disk { dir }
    }

    /// What a power cut now would leave: each watched file's durable bytes,
    /// by file name. The shared-memory index (`-shm`) is not kept: SQLite
    /// builds it again from the WAL.
    pub fn after_power_cut(&self) -> Vec<(String, Vec<u8>)> {
        let watched = lock(watched());
        watched
            .files
            .iter()
            .filter(|(path, _)| path.parent() == Some(self.dir.as_path()))
            .map(|(path, state)| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, lock(state).durable.clone())
            })
            .collect()
    }

    /// From now on every write and sync of a file here fails with `code`
    /// (`SQLITE_FULL`: the disk is full; `SQLITE_IOERR_WRITE`: an I/O
    /// error), until [`Disk::heal`].
    pub fn fail(&self, code: c_int) {
        lock(watched()).failing.insert(self.dir.clone(), code);
    }

    pub fn heal(&self) {
        lock(watched()).failing.remove(&self.dir);
    }

    /// The files a power cut now would leave, written into `into`.
    pub fn restore_power_cut(&self, into: &Path) {
        for (name, bytes) in self.after_power_cut() {
            std::fs::write(into.join(name), bytes).unwrap();
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let mut watched = lock(watched());
        watched.dirs.retain(|d| d != &self.dir);
        let dir = self.dir.clone();
        watched
            .files
            .retain(|p, _| p.parent() != Some(dir.as_path()));
    }
}

/// The state of `path` if it lies in a watched directory (made on first
/// sight from what the file holds: whatever was there before is durable).
fn state_of(path: &Path) -> Option<Arc<Mutex<FileState>>> {
    let name = path.file_name()?.to_string_lossy();
    if name.ends_with("-shm") {
        return None;
    }
    let mut watched = lock(watched());
    let parent = path.parent()?.canonicalize().ok()?;
    if !watched.dirs.contains(&parent) {
        return None;
    }
    let path = parent.join(path.file_name()?);
    Some(
        watched
            .files
            .entry(path.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(FileState {
                    durable: std::fs::read(&path).unwrap_or_default(),
                    pending: Vec::new(),
                }))
            })
            .clone(),
    )
}

/// The shim's file: SQLite's header, then the real file and the state.
#[repr(C)]
struct ShimFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    real_alloc: *mut Vec<u64>,
    state: *const Mutex<FileState>,
    /// Its directory, for [`Disk::fail`].
    dir: *const PathBuf,
}

/// The error writes in `dir` fail with now, if they do.
fn failing(dir: &Path) -> Option<c_int> {
    lock(watched()).failing.get(dir).copied()
}

unsafe fn dir_of<'a>(file: *mut ffi::sqlite3_file) -> &'a Path {
    unsafe { &*(*(file as *mut ShimFile)).dir }
}

struct Vfs(*mut ffi::sqlite3_vfs);
// SAFETY: the VFS is registered once and never changed afterwards.
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    static REAL: OnceLock<Vfs> = OnceLock::new();
    REAL.get_or_init(|| {
        // SAFETY: "unix" is SQLite's own VFS on this platform, never freed.
        let unix = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
        assert!(!unix.is_null(), "SQLite has no unix VFS");
        Vfs(unix)
    })
    .0
}

fn register() {
    static SHIM: OnceLock<Vfs> = OnceLock::new();
    SHIM.get_or_init(|| {
        let real = real_vfs();
        // SAFETY: a copy of the unix VFS with our open and delete; every
        // other method is unix's own and only reads the fields we copied.
        unsafe {
            let mut shim = *real;
            shim.szOsFile = (*real)
                .szOsFile
                .max(std::mem::size_of::<ShimFile>() as c_int);
            shim.zName = c"powercut".as_ptr();
            shim.pNext = std::ptr::null_mut();
            shim.xOpen = Some(shim_open);
            shim.xDelete = Some(shim_delete);
            let shim = Box::into_raw(Box::new(shim));
            assert_eq!(ffi::sqlite3_vfs_register(shim, 1), ffi::SQLITE_OK);
            Vfs(shim)
        }
    });
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock_file),
    xUnlock: Some(unlock_file),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

fn path_of(name: *const c_char) -> Option<PathBuf> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite passes a NUL-terminated file name.
    let name = unsafe { CStr::from_ptr(name) };
    Some(PathBuf::from(name.to_str().ok()?))
}

unsafe extern "C" fn shim_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = real_vfs();
    let path = path_of(name);
    let Some(state) = path.as_deref().and_then(state_of) else {
        // Not watched: the unix VFS opens straight into SQLite's buffer.
        return unsafe { ((*real).xOpen.unwrap())(real, name, file, flags, out_flags) };
    };
    let words = (unsafe { (*real).szOsFile } as usize).div_ceil(8);
    let alloc = Box::into_raw(Box::new(vec![0u64; words]));
    let real_file = unsafe { (*alloc).as_mut_ptr() } as *mut ffi::sqlite3_file;
    let rc = unsafe { ((*real).xOpen.unwrap())(real, name, real_file, flags, out_flags) };
    let shim = file as *mut ShimFile;
    if rc != ffi::SQLITE_OK {
        unsafe {
            drop(Box::from_raw(alloc));
            (*shim).base.pMethods = std::ptr::null();
        }
        return rc;
    }
    unsafe {
        (*shim).real = real_file;
        (*shim).real_alloc = alloc;
        (*shim).state = Arc::into_raw(state);
        let dir = path
            .as_deref()
            .and_then(Path::parent)
            .and_then(|d| d.canonicalize().ok())
            .unwrap_or_default();
        (*shim).dir = Box::into_raw(Box::new(dir));
        (*shim).base.pMethods = &METHODS;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn shim_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let real = real_vfs();
    let rc = unsafe { ((*real).xDelete.unwrap())(real, name, sync_dir) };
    if rc == ffi::SQLITE_OK
        && let Some(state) = path_of(name).and_then(|p| state_of(&p))
    {
        let mut state = lock(&state);
        state.pending.clear();
        state.durable.clear();
    }
    rc
}

/// The real file under a shim file, and its state.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'a Mutex<FileState>) {
    let shim = file as *mut ShimFile;
    unsafe { ((*shim).real, &*(*shim).state) }
}

/// Calls the real file's method `m` with the rest of the arguments.
macro_rules! forward {
    ($file:expr, $m:ident $(, $arg:expr)*) => {{
        let (real, _) = unsafe { parts($file) };
        unsafe { ((*(*real).pMethods).$m.unwrap())(real $(, $arg)*) }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let rc = forward!(file, xClose);
    let shim = file as *mut ShimFile;
    unsafe {
        drop(Box::from_raw((*shim).real_alloc));
        drop(Arc::from_raw((*shim).state));
        drop(Box::from_raw((*shim).dir as *mut PathBuf));
    }
    rc
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    forward!(file, xRead, buf, amount, offset)
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if let Some(code) = failing(unsafe { dir_of(file) }) {
        return code;
    }
    let rc = forward!(file, xWrite, buf, amount, offset);
    if rc == ffi::SQLITE_OK {
        let (_, state) = unsafe { parts(file) };
        // SAFETY: SQLite passes `amount` readable bytes.
        let data = unsafe { std::slice::from_raw_parts(buf as *const u8, amount as usize) };
        lock(state).pending.push(Op::Write(offset, data.to_vec()));
    }
    rc
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let rc = forward!(file, xTruncate, size);
    if rc == ffi::SQLITE_OK {
        let (_, state) = unsafe { parts(file) };
        lock(state).pending.push(Op::Truncate(size));
    }
    rc
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    if let Some(code) = failing(unsafe { dir_of(file) }) {
        return if code == ffi::SQLITE_FULL {
            code
        } else {
            ffi::SQLITE_IOERR_FSYNC
        };
    }
    let rc = forward!(file, xSync, flags);
    if rc == ffi::SQLITE_OK {
        let (_, state) = unsafe { parts(file) };
        lock(state).sync();
    }
    rc
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    forward!(file, xFileSize, size)
}

unsafe extern "C" fn lock_file(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xLock, level)
}

unsafe extern "C" fn unlock_file(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xUnlock, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward!(file, xCheckReservedLock, out)
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    forward!(file, xFileControl, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forward!(file, xShmMap, page, size, extend, out)
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    forward!(file, xShmLock, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    forward!(file, xShmBarrier)
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forward!(file, xShmUnmap, delete)
}
