//! Trellis-coded quantization: tern's vector formats for 2, 3 and 4 bits per weight.
//!
//! A row of `n` weights is one bit stream of `k n + L - k` bits (`k` the bits per weight, `L` =
//! [`STATE_BITS`]). Weight `i` reads the `L`-bit window that starts at bit `k i` as its state, and its value is
//! a fixed pseudo-Gaussian function of the state ([`code`]) times the scale of its block. Consecutive windows
//! overlap in `L - k` bits, so the codes a row can take are the paths through a shift-register trellis of
//! `2^L` states; the quantizer finds the path of least importance-weighted squared error with the Viterbi
//! algorithm. This is the "bitshift trellis" of QTIP (Tseng et al., "QTIP: Quantization with Trellises and
//! Incoherence Processing", 2024), with its "1MAD" computed codebook (an LCG step, then the sum of the
//! result's bytes) restricted to 7-bit bytes so that an int8 kernel can take a weight's bytes as its
//! unsigned operand without saturating a 16-bit pair sum.
//!
//! Measured on unit Gaussian data with `L = 12` (mean squared error per weight): 0.071 at 2 bits, 0.020 at 3
//! and 0.0056 at 4, against the rate-distortion bound's 0.0625, 0.0156 and 0.0039, and a fixed-rate scalar
//! quantizer's best 0.118, 0.035 and 0.0095.

/// Bits of a weight's state (the trellis has `2^STATE_BITS` states).
pub const STATE_BITS: usize = 12;
const STATES: usize = 1 << STATE_BITS;

/// The LCG multiplier and increment of the codebook (QTIP's 1MAD constants).
pub const CODE_MUL: u32 = 34_038_481;
pub const CODE_ADD: u32 = 76_625_530;

/// The middle of the codebook's range: codes are the sum of four 7-bit bytes (0..=508) minus this.
pub const CODE_MIDDLE: i32 = 254;

/// The codebook's standard deviation over the states (measured; `codebook_is_centred_and_spread` checks it).
pub const CODE_SD: f32 = 73.9;

/// The codebook: the value of a state before scaling, an integer in `-254..=254` with a nearly Gaussian
/// distribution over the states (mean 0, standard deviation about [`CODE_SD`]).
pub fn code(state: u32) -> i32 {
    let x = state.wrapping_mul(CODE_MUL).wrapping_add(CODE_ADD) & 0x7F7F_7F7F;
    ((x & 0x7F) + (x >> 8 & 0x7F) + (x >> 16 & 0x7F) + (x >> 24)) as i32 - CODE_MIDDLE
}

/// The state of weight `i` in a row's bit stream of `k` bits per weight.
pub fn state(stream: &[u32], k: usize, i: usize) -> u32 {
    let bit = k * i;
    let (w, s) = (bit / 32, bit % 32);
    let lo = u64::from(stream[w]);
    let hi = stream.get(w + 1).map_or(0, |&v| u64::from(v));
    (((hi << 32 | lo) >> s) & (STATES as u64 - 1)) as u32
}

/// u32 words of a row's bit stream: `k n + L - k` bits, rounded up to a word.
pub fn stream_words(k: usize, n: usize) -> usize {
    (k * n + STATE_BITS - k).div_ceil(32)
}

/// The Viterbi search, with its buffers kept between rows.
#[derive(Debug)]
pub struct TrellisSearch {
    k: usize,
    codes: Vec<f32>,
    cost: Vec<f32>,
    best: Vec<f32>,
    back: Vec<u8>,
}

impl TrellisSearch {
    /// A search for `k` bits per weight (1 to 4).
    pub fn new(k: usize) -> crate::Result<Self> {
        if !(1..=4).contains(&k) {
            return Err(crate::Error::TernShape { detail: format!("trellis codes take 1 to 4 bits per weight, not {k}") });
        }
        Ok(TrellisSearch {
            k,
            codes: (0..STATES as u32).map(|s| code(s) as f32).collect(),
            cost: vec![0.0; STATES],
            best: vec![0.0; STATES >> k],
            back: Vec::new(),
        })
    }

    /// The path of least `sum_i w_i (scale_i code(s_i) - x_i)^2`: one state per weight, each the previous
    /// one shifted right by `k` bits with `k` new bits on top.
    pub fn search(&mut self, x: &[f32], w: &[f32], scale: &[f32]) -> Vec<u32> {
        self.search_from(None, x, w, scale)
    }

    /// Like [`TrellisSearch::search`], but when `from` is the state of the weight before `x[0]`, the first
    /// state must follow from it (the path continues a row already begun).
    pub fn search_from(&mut self, from: Option<u32>, x: &[f32], w: &[f32], scale: &[f32]) -> Vec<u32> {
        let (k, n) = (self.k, x.len());
        let nlo = STATES >> k;
        if n == 0 {
            return Vec::new();
        }
        // Step cost a (c - y)^2, with a = w s^2 and y = x / s; a zero scale makes every state equal.
        let step =
            |i: usize| -> (f32, f32) { if scale[i] > 0.0 { (w[i] * scale[i] * scale[i], x[i] / scale[i]) } else { (0.0, 0.0) } };
        let (a, y) = step(0);
        for (t, (c, &v)) in self.cost.iter_mut().zip(&self.codes).enumerate() {
            let reachable = from.is_none_or(|f| t as u32 & (nlo as u32 - 1) == f >> k);
            *c = if reachable { a * (v - y) * (v - y) } else { f32::INFINITY };
        }
        self.back.resize(n * nlo, 0);
        #[cfg(target_arch = "x86_64")]
        // (For 16-way minimums, k = 4, the baseline build's code is the faster one.)
        if self.k == 4 {
            self.steps(n, &step);
        } else if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature `steps_avx512` is compiled for.
            unsafe { self.steps_avx512(n, &step) };
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { self.steps_avx2(n, &step) };
        } else {
            self.steps(n, &step);
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.steps(n, &step);
        let mut t = (0..STATES).fold(0, |b, s| if self.cost[s] < self.cost[b] { s } else { b });
        let mut states = vec![0u32; n];
        for i in (0..n).rev() {
            states[i] = t as u32;
            if i > 0 {
                let lo = t & (nlo - 1);
                t = lo << k | usize::from(self.back[i * nlo + lo]);
            }
        }
        states
    }

    /// Steps 1 to `n - 1` of the search: each state's least cost so far and the back pointers.
    #[inline(always)]
    fn steps(&mut self, n: usize, step: &dyn Fn(usize) -> (f32, f32)) {
        let nlo = STATES >> self.k;
        for i in 1..n {
            self.reduce(i);
            let (a, y) = step(i);
            for (cost, codes) in self.cost.chunks_exact_mut(nlo).zip(self.codes.chunks_exact(nlo)) {
                for ((c, &v), &b) in cost.iter_mut().zip(codes).zip(&self.best) {
                    let d = v - y;
                    *c = b + a * d * d;
                }
            }
        }
    }

    /// [`TrellisSearch::steps`] compiled for AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn steps_avx512(&mut self, n: usize, step: &dyn Fn(usize) -> (f32, f32)) {
        self.steps(n, step)
    }

    /// [`TrellisSearch::steps`] compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn steps_avx2(&mut self, n: usize, step: &dyn Fn(usize) -> (f32, f32)) {
        self.steps(n, step)
    }

    /// For every state's low `L - k` bits `lo`, the least cost among the `2^k` states `lo << k | p` that step
    /// to it (consecutive in `cost`), into `best`, and its `p` into step `i`'s back pointers.
    #[inline(always)]
    fn reduce(&mut self, i: usize) {
        let nlo = STATES >> self.k;
        let back = &mut self.back[i * nlo..(i + 1) * nlo];
        match self.k {
            1 => least::<2>(&self.cost, &mut self.best, back),
            2 => least::<4>(&self.cost, &mut self.best, back),
            3 => least::<8>(&self.cost, &mut self.best, back),
            _ => least::<16>(&self.cost, &mut self.best, back),
        }
    }
}

/// The least of each group of `G` consecutive costs and its place in the group, as a tree of pairwise
/// minimums (which the compiler turns into vector code).
#[inline(always)]
fn least<const G: usize>(cost: &[f32], best: &mut [f32], back: &mut [u8]) {
    for ((b, p), g) in best.iter_mut().zip(back.iter_mut()).zip(cost.chunks_exact(G)) {
        let mut v: [(f32, u8); G] = std::array::from_fn(|j| (g[j], j as u8));
        let mut len = G;
        while len > 1 {
            len /= 2;
            for j in 0..len {
                let (x, y) = (v[2 * j], v[2 * j + 1]);
                v[j] = if y.0 < x.0 { y } else { x };
            }
        }
        (*b, *p) = v[0];
    }
}

/// Writes the bit stream of a path of states (each the previous shifted right by `k` with `k` new bits on top).
pub fn pack_states(states: &[u32], k: usize, out: &mut [u32]) {
    out.fill(0);
    let mut put = |bit: usize, width: usize, v: u32| {
        for j in 0..width {
            let b = bit + j;
            out[b / 32] |= (v >> j & 1) << (b % 32);
        }
    };
    if let Some(&s0) = states.first() {
        put(0, STATE_BITS, s0);
    }
    for (i, &s) in states.iter().enumerate().skip(1) {
        put(k * i + STATE_BITS - k, k, s >> (STATE_BITS - k));
    }
}

/// One row quantized: its bit stream, its block scale codes and its scale unit `d` (block `b`'s scale is
/// `d * codes[b]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrellisRow {
    pub stream: Vec<u32>,
    pub codes: Vec<u32>,
    pub d: f32,
}

/// Quantizes a row `x` under element weights `w` with `k` bits per weight, blocks of `block` weights sharing a
/// scale code in `0..=cmax`. The scales start at each block's weighted RMS over the codebook's; the search
/// runs, the scales are refitted by weighted least squares on the codes found, and the search runs again.
pub fn quantize_row(search: &mut TrellisSearch, x: &[f32], w: &[f32], block: usize, cmax: u32) -> TrellisRow {
    let (k, n) = (search.k, x.len());
    let nb = n / block;
    let mut fits: Vec<f32> = (0..nb)
        .map(|b| {
            let (xb, wb) = (&x[b * block..(b + 1) * block], &w[b * block..(b + 1) * block]);
            let sw: f32 = wb.iter().sum();
            let sxx: f32 = xb.iter().zip(wb).map(|(&v, &wi)| wi * v * v).sum();
            if sw > 0.0 {
                (sxx / sw).sqrt() / CODE_SD
            } else {
                (xb.iter().map(|v| v * v).sum::<f32>() / block as f32).sqrt() / CODE_SD
            }
        })
        .collect();
    let mut scale = vec![0f32; n];
    let mut row = TrellisRow { stream: vec![0; stream_words(k, n)], codes: vec![0; nb], d: 0.0 };
    let mut states = Vec::new();
    for pass in 0..2 {
        row.d = fits.iter().fold(0f32, |a, &f| a.max(f)) / cmax as f32;
        for (b, c) in row.codes.iter_mut().enumerate() {
            *c = if row.d > 0.0 { (fits[b] / row.d).round().clamp(0.0, cmax as f32) as u32 } else { 0 };
            scale[b * block..(b + 1) * block].fill(row.d * *c as f32);
        }
        states = search.search(x, w, &scale);
        if pass == 1 {
            break;
        }
        for (b, f) in fits.iter_mut().enumerate() {
            let (mut sxc, mut scc) = (0f32, 0f32);
            for i in b * block..(b + 1) * block {
                let c = search.codes[states[i] as usize];
                sxc += w[i] * x[i] * c;
                scc += w[i] * c * c;
            }
            if scc > 0.0 && sxc > 0.0 {
                *f = sxc / scc;
            }
        }
    }
    pack_states(&states, k, &mut row.stream);
    row
}

/// Row `row` as f32: `x_i = d * codes[i / block] * code(state_i)`.
pub fn dequantize_row(row: &TrellisRow, k: usize, block: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = row.d * row.codes[i / block] as f32 * code(state(&row.stream, k, i)) as f32;
    }
}

/// Quantizes a row with error feedback (GPTQ's, applied a scale block at a time as QTIP's BlockLDLQ does):
/// each block is searched on the weights as they stand when it is reached, its path continuing the row's, and
/// its rounding errors then move the weights not yet quantized through the factor `u` of the inverse second
/// moments. `d` is the row's scale unit, found on the original weights.
pub(crate) fn quantize_row_with_feedback(
    search: &mut TrellisSearch,
    x: &[f32],
    factor: &crate::FeedbackFactor,
    (block, cmax, d): (usize, u32, f32),
) -> TrellisRow {
    let (k, n) = (search.k, x.len());
    let mut wts: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut row = TrellisRow { stream: vec![0; stream_words(k, n)], codes: vec![0; n / block], d };
    let mut states: Vec<u32> = Vec::with_capacity(n);
    let (mut xb, mut wb, mut scale) = (vec![0f32; block], vec![0f32; block], vec![0f32; block]);
    for b in 0..n / block {
        let cols = b * block..(b + 1) * block;
        for (o, &v) in xb.iter_mut().zip(&wts[cols.clone()]) {
            *o = v as f32;
        }
        // Rounding column j costs (e_j)^2 / U_jj^2 once the later columns have compensated what they can (GPTQ's
        // objective), so that is each weight's importance here.
        for (o, j) in wb.iter_mut().zip(cols.clone()) {
            let u = factor.u_at(j, j);
            *o = if u > 0.0 { (1.0 / (u * u)) as f32 } else { 0.0 };
        }
        let from = states.last().copied();
        let sw: f32 = wb.iter().sum();
        let sxx: f32 = xb.iter().zip(&wb).map(|(&v, &wi)| wi * v * v).sum();
        let mut fit = if sw > 0.0 { (sxx / sw).sqrt() / CODE_SD } else { 0.0 };
        let mut path = Vec::new();
        for pass in 0..2 {
            let c = if d > 0.0 { (fit / d).round().clamp(0.0, cmax as f32) as u32 } else { 0 };
            row.codes[b] = c;
            scale.fill(d * c as f32);
            path = search.search_from(from, &xb, &wb, &scale);
            if pass == 1 {
                break;
            }
            let (mut sxc, mut scc) = (0f32, 0f32);
            for ((&v, &wi), &s) in xb.iter().zip(&wb).zip(&path) {
                let c = search.codes[s as usize];
                sxc += wi * v * c;
                scc += wi * c * c;
            }
            if scc > 0.0 && sxc > 0.0 {
                fit = sxc / scc;
            }
        }
        let s = f64::from(d * row.codes[b] as f32);
        for (j, &st) in cols.clone().zip(&path) {
            let q = s * f64::from(code(st));
            let err = (wts[j] - q) / factor.u_at(j, j);
            for (kk, u) in factor.u_row(j).iter().enumerate().skip(j + 1) {
                wts[kk] -= err * u;
            }
        }
        states.extend_from_slice(&path);
    }
    pack_states(&states, k, &mut row.stream);
    row
}

/// Quantizes the rows in `data` (each of `cols` weights), each under the element weights tern's scalar formats
/// use (the column importance times `sqrt(sigma2 + x^2)`, the importance being the feedback factor's when
/// there is one). With a `feedback` factor, each row is then quantized again with error feedback
/// ([`quantize_row_with_feedback`]), keeping the plain quantization's row unit.
pub fn quantize_rows(
    k: usize,
    cols: usize,
    data: &[f32],
    importance: Option<&[f32]>,
    feedback: Option<&crate::FeedbackFactor>,
    (block, cmax): (usize, u32),
) -> crate::Result<Vec<TrellisRow>> {
    let bad = |detail: String| Err(crate::Error::TernShape { detail });
    if cols == 0 || block == 0 || !cols.is_multiple_of(block) || !data.len().is_multiple_of(cols) || cmax == 0 {
        return bad(format!("{} values in rows of {cols}, scale blocks of {block}, codes up to {cmax}", data.len()));
    }
    if importance.is_some_and(|m| m.len() != cols) || feedback.is_some_and(|f| f.cols != cols) {
        return bad(format!("importance or feedback statistics for another row length than {cols}"));
    }
    let mut search = TrellisSearch::new(k)?;
    let mut w = vec![0f32; cols];
    let importance = feedback.map(|f| f.importance.as_slice()).or(importance);
    Ok(data
        .chunks_exact(cols)
        .map(|x| {
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            crate::tern_formats::element_weights(x, importance, sigma2, &mut w);
            let plain = quantize_row(&mut search, x, &w, block, cmax);
            match feedback {
                Some(f) => quantize_row_with_feedback(&mut search, x, f, (block, cmax, plain.d)),
                None => plain,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.max(1);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n).map(|_| ((-2.0 * (next() + 1e-12).ln()).sqrt() * (std::f64::consts::TAU * next()).cos()) as f32).collect()
    }

    #[test]
    fn codebook_is_centred_and_spread() {
        let codes: Vec<f64> = (0..STATES as u32).map(|s| f64::from(code(s))).collect();
        let mean = codes.iter().sum::<f64>() / STATES as f64;
        let sd = (codes.iter().map(|c| (c - mean) * (c - mean)).sum::<f64>() / STATES as f64).sqrt();
        assert!(mean.abs() < 3.0 && (65.0..80.0).contains(&sd), "mean {mean}, sd {sd}");
    }

    #[test]
    fn search_beats_scalar_rounding_and_its_stream_decodes_to_its_path() {
        for k in [2usize, 3, 4] {
            let x = gaussian(512, 7 + k as u64);
            let scale = vec![1.0 / CODE_SD; x.len()];
            let states = TrellisSearch::new(k).unwrap().search(&x, &vec![1.0; x.len()], &scale);
            let mut stream = vec![0u32; stream_words(k, x.len())];
            pack_states(&states, k, &mut stream);
            for (i, &s) in states.iter().enumerate() {
                assert_eq!(state(&stream, k, i), s, "k {k} weight {i}");
            }
            let mse = x.iter().zip(&states).map(|(&v, &s)| (code(s) as f32 / CODE_SD - v).powi(2)).sum::<f32>() / x.len() as f32;
            // The best fixed-rate scalar quantizers of a unit Gaussian (Lloyd-Max): 0.1175, 0.03454, 0.009497.
            let scalar = [0.0, 0.3634, 0.1175, 0.03454, 0.009497][k];
            assert!(mse < 0.8 * scalar, "k {k}: mse {mse} against scalar {scalar}");
        }
    }
    #[test]
    fn feedback_lowers_the_output_error() {
        // Correlated activations: each column mixes its neighbour's, so earlier errors can be compensated.
        let (cols, tokens) = (128usize, 512usize);
        let z = gaussian(cols * tokens, 3);
        let mut act = vec![0f32; cols * tokens];
        for t in 0..tokens {
            for c in 0..cols {
                act[t * cols + c] = z[t * cols + c] + if c > 0 { 0.9 * z[t * cols + c - 1] } else { 0.0 };
            }
        }
        let mut gram = vec![0f64; cols * cols];
        for t in 0..tokens {
            let a = &act[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    gram[i * cols + j] += f64::from(a[i] * a[j]);
                }
            }
        }
        let factor = crate::FeedbackFactor::new(&gram, cols, tokens, 0.01).unwrap();
        let x = gaussian(4 * cols, 11);
        // (w - w_q)^T H (w - w_q) summed over the rows, for dequantized rows `q`.
        let output_error = |q: &[f32]| -> f64 {
            let mut total = 0.0;
            for (xr, qr) in x.chunks_exact(cols).zip(q.chunks_exact(cols)) {
                let e: Vec<f64> = xr.iter().zip(qr).map(|(&a, &b)| f64::from(a - b)).collect();
                total += (0..cols).map(|i| (0..cols).map(|j| e[i] * gram[i * cols + j] * e[j]).sum::<f64>()).sum::<f64>();
            }
            total
        };
        let trellis = |rows: &[TrellisRow]| -> Vec<f32> {
            let mut q = vec![0f32; x.len()];
            for (row, out) in rows.iter().zip(q.chunks_exact_mut(cols)) {
                dequantize_row(row, 2, 64, out);
            }
            q
        };
        let plain = quantize_rows(2, cols, &x, Some(&factor.importance), None, (64, 255)).unwrap();
        let fed = quantize_rows(2, cols, &x, None, Some(&factor), (64, 255)).unwrap();
        let (ep, ef) = (output_error(&trellis(&plain)), output_error(&trellis(&fed)));
        let t2 = crate::TernMatrix::quantize(tern_core::TernFormat::T2, 4, cols, &x, Some(&factor.importance)).unwrap();
        let t2f = crate::TernMatrix::quantize_with_feedback(tern_core::TernFormat::T2, 4, cols, &x, &factor).unwrap();
        let (tp, tf) = (output_error(&t2.dequantize()), output_error(&t2f.dequantize()));
        // docs/QUALITY.md quotes these gains (run with --nocapture).
        eprintln!("output error: trellis {ep:.0} -> {ef:.0} with feedback, T2 {tp:.0} -> {tf:.0}");
        // A modest gain for the trellis, far below scalar rounding's: the search inside a block weighs its
        // errors as independent, while these activations correlate neighbouring columns.
        assert!(ef < ep, "output error with feedback {ef}, without {ep}");
        assert!(tf / tp < ef / ep, "T2 feedback {tp} -> {tf}, trellis {ep} -> {ef}");
    }
    #[test]
    fn a_search_from_a_state_continues_the_path() {
        for k in [2usize, 3, 4] {
            let x = gaussian(192, 5 + k as u64);
            let (w, scale) = (vec![1.0; 96], vec![1.0 / CODE_SD; 96]);
            let mut search = TrellisSearch::new(k).unwrap();
            let mut path = search.search(&x[..96], &w, &scale);
            let rest = search.search_from(path.last().copied(), &x[96..], &w, &scale);
            path.extend_from_slice(&rest);
            let mut stream = vec![0u32; stream_words(k, path.len())];
            pack_states(&path, k, &mut stream);
            for (i, &s) in path.iter().enumerate() {
                assert_eq!(state(&stream, k, i), s, "k {k} weight {i}");
            }
        }
    }
}
