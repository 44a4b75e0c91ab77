//! Incoherence processing (QuIP#, Tseng et al. 2024; QTIP): a matrix is rotated along its input dimension by a
//! randomized Hadamard transform in blocks of a power-of-two width, so that its weights look like Gaussian
//! noise to a quantizer and the second moments of its input lose their structure; the activations are rotated
//! the same way, so the product is unchanged: `W x = (W R^T)(R x)`.
//!
//! `R` is block-diagonal; each block multiplies column `c` by a fixed random sign ([`sign`]) and then applies
//! the orthonormal Walsh-Hadamard transform.

use std::ops::{Add, Mul, Sub};

/// In-place Walsh-Hadamard transform of a power-of-two-long slice, scaled by `1 / sqrt(len)` (orthonormal and
/// its own inverse).
pub fn hadamard<T>(v: &mut [T])
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<Output = T> + From<f32>,
{
    let n = v.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (v[j], v[j + h]);
                (v[j], v[j + h]) = (a + b, a - b);
            }
        }
        h *= 2;
    }
    let scale = T::from(1.0 / (n as f32).sqrt());
    v.iter_mut().for_each(|x| *x = *x * scale);
}

/// Column `c`'s sign, the same every time (a fixed hash of the index).
pub fn sign(c: usize) -> f32 {
    let mut s = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    s ^= s >> 31;
    s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    if (s >> 40) & 1 == 0 { 1.0 } else { -1.0 }
}

/// Rotates each row of `data` (rows of `cols`) in blocks of `block` columns: `forward` applies `R` (signs,
/// then the transform), otherwise `R^T` (the transform, then the signs). `block` must be a power of two
/// dividing `cols`.
pub fn rotate_rows<T>(data: &mut [T], cols: usize, block: usize, forward: bool)
where
    T: Copy + Add<Output = T> + Sub<Output = T> + Mul<Output = T> + From<f32>,
{
    let signs = |b: &mut [T], k: usize| b.iter_mut().enumerate().for_each(|(i, x)| *x = *x * T::from(sign(k * block + i)));
    for row in data.chunks_exact_mut(cols) {
        for (k, b) in row.chunks_exact_mut(block).enumerate() {
            if forward {
                signs(b, k);
            }
            hadamard(b);
            if !forward {
                signs(b, k);
            }
        }
    }
}

/// The second moments of rotated inputs, `R G R^T`, from those of the plain inputs (`cols x cols`,
/// row-major, symmetric).
pub fn rotate_gram(gram: &mut [f64], cols: usize, block: usize) {
    rotate_rows(gram, cols, block, true);
    transpose(gram, cols);
    rotate_rows(gram, cols, block, true);
}

fn transpose(m: &mut [f64], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            m.swap(i * n + j, j * n + i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthonormal_and_the_gram_follows_it() {
        let (cols, block) = (8usize, 4usize);
        let x: Vec<f64> = (0..3 * cols).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
        let mut r = x.clone();
        rotate_rows(&mut r, cols, block, true);
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
        assert!((norm(&r) - norm(&x)).abs() < 1e-9);
        let mut back = r.clone();
        rotate_rows(&mut back, cols, block, false);
        assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12));
        // Gram of the rotated rows against the rotated gram of the plain rows.
        let gram = |rows: &[f64]| {
            let mut g = vec![0f64; cols * cols];
            for row in rows.chunks_exact(cols) {
                for i in 0..cols {
                    for j in 0..cols {
                        g[i * cols + j] += row[i] * row[j];
                    }
                }
            }
            g
        };
        let mut g = gram(&x);
        rotate_gram(&mut g, cols, block);
        assert!(g.iter().zip(&gram(&r)).all(|(a, b)| (a - b).abs() < 1e-9));
    }
}
