//! The one place that knows whether work runs on rayon's threads or in sequence.

/// Runs `f(i)` for every `i` in `0..n`, on rayon's threads when the `parallel` feature is on.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Send + Sync) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(not(feature = "parallel"))]
    (0..n).for_each(f);
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
