//! What incoherence processing would buy tern's scalar formats, measured without kernels: every matrix of an
//! f32 GGUF model is rotated along its input dimension by a randomized Hadamard transform in blocks of `B`
//! columns (random signs, then the Walsh-Hadamard transform, scaled to stay orthonormal), quantized to a tern
//! format, dequantized and rotated back; the result is written as an f32 GGUF, so that `tern eval` measures
//! the loss that rotated quantization alone causes. With `B = 0` the matrices are quantized plainly (the
//! baseline). No importance matrix either way.
//!
//! Run: cargo run --release -p tern --example rotation_probe -- IN.gguf OUT.gguf FORMAT B
//! then: tern eval -m OUT.gguf --text eval.txt --reference-logits f32.tern.logits

use tern_core::{TensorType, TernFormat};
use tern_loader::{GgufWriter, ModelSource};
use tern_quant::TernMatrix;
use tern_quant::rotation::rotate_rows;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, format, block] = args.as_slice() else {
        return Err("usage: rotation_probe IN.gguf OUT.gguf T2|T3|T4|T8 BLOCK (0: no rotation)".into());
    };
    let format = TernFormat::ALL.into_iter().find(|f| f.name() == format).ok_or("unknown format")?;
    let b: usize = block.parse()?;
    if b != 0 && !b.is_power_of_two() {
        return Err("BLOCK must be a power of two".into());
    }
    let source = ModelSource::open(input)?;
    let mut w = GgufWriter::new();
    for (k, v) in source.metadata().iter() {
        w.metadata(k, v.clone());
    }
    let mut processed = 0;
    for t in source.tensors() {
        let bytes = source.tensor(&t.name)?.bytes.to_vec();
        let matrix = t.dims.len() == 2 && t.ty == TensorType::F32 && !t.name.contains("norm");
        if !matrix {
            w.tensor(t.name.clone(), t.ty, &t.dims, bytes)?;
            continue;
        }
        if b != 0 && !t.dims[0].is_multiple_of(b) {
            // Left alone it would stay f32 while the baseline quantizes it: the comparison would be skewed.
            return Err(format!("{} has {} columns, not a multiple of the block {b}", t.name, t.dims[0]).into());
        }
        processed += 1;
        let (cols, rows) = (t.dims[0], t.dims[1]);
        let mut data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if b != 0 {
            rotate_rows(&mut data, cols, b, true);
        }
        let q = TernMatrix::quantize(format, rows, cols, &data, None)?;
        for (r, row) in data.chunks_exact_mut(cols).enumerate() {
            q.dequantize_row(r, row);
        }
        if b != 0 {
            rotate_rows(&mut data, cols, b, false);
        }
        eprintln!("{} {rows}x{cols}", t.name);
        w.tensor(t.name.clone(), t.ty, &t.dims, data.iter().flat_map(|x| x.to_le_bytes()).collect())?;
    }
    if processed == 0 {
        return Err("no f32 matrices in the input: give it an f32 GGUF model".into());
    }
    w.write(output)?;
    Ok(())
}
