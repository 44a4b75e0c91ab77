//! The one place that knows whether work runs on the backend's team, on rayon's threads, or in sequence.

/// Runs `f(i)` for every `i` in `0..n`: with the `parallel` feature, on the calling thread's team (see
/// [`crate::team`]) when it has a free one, else on rayon's threads.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Send + Sync) {
    #[cfg(feature = "parallel")]
    {
        if crate::team::Team::run_current(n, &f) {
            return;
        }
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(not(feature = "parallel"))]
    (0..n).for_each(f);
}

/// Elements per task of the row-wise ops: a decode step's rows stay on the calling thread.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

/// Rows per chunk of a row-wise op over rows of `cols` values.
fn chunk_rows(cols: usize) -> usize {
    (ELEMENTS_PER_TASK / cols.max(1)).max(1)
}

/// Whether a row-wise op over `len` values in rows of `cols` is split into more than one chunk.
pub(crate) fn splits(len: usize, cols: usize) -> bool {
    len > chunk_rows(cols) * cols.max(1)
}

/// Calls `f(first_row, rows)` for consecutive chunks of whole rows of `data` (rows of `cols` values), in
/// parallel (as [`for_each`]) when there is more than one chunk.
pub(crate) fn for_row_chunks(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Send + Sync) {
    let rows = chunk_rows(cols);
    let chunk = rows * cols.max(1);
    if !splits(data.len(), cols) {
        return f(0, data);
    }
    let (len, base) = (data.len(), SharedMut(data.as_mut_ptr()));
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        // Safety: chunk i is the elements of `data` from `start` on (at most `chunk`), which no other task
        // touches; `data` is borrowed mutably for the whole section.
        let c = unsafe { std::slice::from_raw_parts_mut(base.at(start), chunk.min(len - start)) };
        f(i * rows, c)
    });
}

/// A raw pointer that tasks writing disjoint elements may share.
pub(crate) struct SharedMut<T = f32>(pub *mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedMut<T> {}

// Safety: only used by tasks that each write a disjoint set of indices and never read what another writes.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer to element `i`.
    ///
    /// # Safety
    /// `i` is in bounds of the allocation (or one past its end).
    pub(crate) unsafe fn at(self, i: usize) -> *mut T {
        // Safety: guaranteed by the caller.
        unsafe { self.0.add(i) }
    }

    /// Writes `v` at `i`.
    ///
    /// # Safety
    /// `i` is in bounds of the allocation and no other task touches element `i` during the parallel section.
    pub(crate) unsafe fn write(self, i: usize, v: T) {
        // Safety: guaranteed by the caller.
        unsafe { *self.0.add(i) = v }
    }
}
