//! What tern's trellis codes would buy, measured without kernels: every matrix of an f32 GGUF model is
//! quantized (trellis code at K bits, or a scalar tern format named by a rule), dequantized, and written back
//! as f32 so that `tern eval` measures the loss alone.
//!
//! Run: cargo run --release -p tern --example trellis_probe -- IN.gguf OUT.gguf IMATRIX|- BLOCK CBITS RULE...
//! where each RULE is `PATTERN=SPEC` (the first whose PATTERN the tensor name contains wins; `*` matches every
//! name) and SPEC is `K2`/`K3`/`K4` (trellis) or a tern format (`T4`).

use tern::ImportanceMatrix;
use tern_core::{TensorType, TernFormat};
use tern_loader::{GgufWriter, ModelSource};
use tern_quant::TernMatrix;
use tern_quant::rotation::rotate_rows;
use tern_quant::trellis;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, imatrix, block, cbits, rules @ ..] = args.as_slice() else {
        return Err("usage: trellis_probe IN.gguf OUT.gguf IMATRIX|- BLOCK CBITS PATTERN=SPEC...".into());
    };
    let (block, cbits): (usize, u32) = (block.parse()?, cbits.parse()?);
    if !(1..=16).contains(&cbits) {
        return Err("CBITS must be 1 to 16".into());
    }
    let cmax = (1u32 << cbits) - 1;
    let rules: Vec<(String, String)> = rules
        .iter()
        .map(|r| r.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).ok_or("RULE is PATTERN=SPEC"))
        .collect::<Result<_, _>>()?;
    let importance = if imatrix == "-" { None } else { Some(ImportanceMatrix::load(imatrix)?) };
    // FEEDBACK=N: error feedback from the second moments of N chunks of CALIBRATION (a text file).
    let feedback_chunks: usize = std::env::var("FEEDBACK").ok().map(|v| v.parse()).transpose()?.unwrap_or(0);
    // ROTATE=B: rotate every matrix along its input in blocks of B (tern_quant::rotation) before quantizing and
    // back after; the second moments are rotated along, so importance and feedback are the rotated inputs'.
    // NOFEEDBACK=1 then takes only the importance from them.
    let rotate: usize = std::env::var("ROTATE").ok().map(|v| v.parse()).transpose()?.unwrap_or(0);
    let no_feedback = std::env::var("NOFEEDBACK").is_ok_and(|v| v == "1");
    if rotate != 0 && (feedback_chunks == 0 || !rotate.is_power_of_two()) {
        return Err("ROTATE=B takes a power of two B and FEEDBACK=N chunks of second moments".into());
    }
    let (moments, factors) = if feedback_chunks > 0 {
        let text = std::fs::read_to_string(std::env::var("CALIBRATION")?)?;
        let engine = tern::Engine::builder(input).backend(tern::BackendChoice::Cpu).context(512).build()?;
        let mut m = tern::SecondMoments::collect(&engine, &text, 512, Some(feedback_chunks), &mut |_, _| {})?;
        if rotate != 0 {
            for (cols, g) in &mut m.grams {
                tern_quant::rotation::rotate_gram(g, *cols, rotate);
            }
        }
        let f = std::thread::scope(|s| {
            let handles: Vec<_> =
                m.grams.iter().map(|(cols, g)| s.spawn(|| tern_quant::FeedbackFactor::new(g, *cols, m.tokens, 0.01))).collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "a factor thread panicked")?.map_err(Error::from))
                .collect::<Result<Vec<_>, Error>>()
        })?;
        (Some(m), f)
    } else {
        (None, Vec::new())
    };
    let source = ModelSource::open(input)?;
    let mut w = GgufWriter::new();
    for (k, v) in source.metadata().iter() {
        w.metadata(k, v.clone());
    }
    let (mut bits, mut params) = (0f64, 0f64);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in source.tensors() {
        let bytes = source.tensor(&t.name)?.bytes.to_vec();
        let matrix = t.dims.len() == 2 && t.ty == TensorType::F32 && !t.name.contains("norm");
        let n: usize = t.dims.iter().product();
        params += n as f64;
        if !matrix {
            bits += 32.0 * n as f64;
            w.tensor(t.name.clone(), t.ty, &t.dims, bytes)?;
            continue;
        }
        let (cols, rows) = (t.dims[0], t.dims[1]);
        let spec = rules
            .iter()
            .find(|(p, _)| p == "*" || t.name.contains(p.as_str()))
            .map(|(_, s)| s.as_str())
            .ok_or("no rule matches")?;
        let mut data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let site = moments.as_ref().and_then(|m| m.site_of.get(&t.name)).map(|&i| &factors[i]).filter(|f| f.cols == cols);
        let imp = if rotate != 0 {
            if !cols.is_multiple_of(rotate) {
                return Err(format!("{}: {cols} columns, not a multiple of ROTATE={rotate}", t.name).into());
            }
            rotate_rows(&mut data, cols, rotate, true);
            Some(site.ok_or(format!("{}: no second moments to rotate", t.name))?.importance.as_slice())
        } else {
            importance.as_ref().and_then(|m| m.columns.get(&t.name)).map(|v| v.as_slice())
        };
        let factor = site.filter(|_| !no_feedback);
        let start = std::time::Instant::now();
        if let Some(k) = spec.strip_prefix('K') {
            let k: usize = k.parse()?;
            if !(1..=4).contains(&k) || block == 0 || !cols.is_multiple_of(block) {
                return Err(format!(
                    "{}: K{k} with scale blocks of {block} (K takes 1 to 4 bits; the block must divide {cols})",
                    t.name
                )
                .into());
            }
            let per = rows.div_ceil(threads);
            let parts: Vec<Vec<trellis::TrellisRow>> = std::thread::scope(|s| {
                let handles: Vec<_> = data
                    .chunks(per * cols)
                    .map(|part| s.spawn(move || trellis::quantize_rows(k, cols, part, imp, factor, (block, cmax))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| "a quantizer thread panicked")?.map_err(Error::from))
                    .collect::<Result<Vec<_>, Error>>()
            })?;
            for (row, out) in parts.iter().flatten().zip(data.chunks_exact_mut(cols)) {
                trellis::dequantize_row(row, k, block, out);
            }
            bits += (rows * (32 * trellis::stream_words(k, cols) + cols / block * cbits as usize + 32)) as f64;
        } else {
            let format = TernFormat::from_name(spec).ok_or("unknown format")?;
            let q = match factor {
                Some(f) => TernMatrix::quantize_with_feedback(format, rows, cols, &data, f)?,
                None => TernMatrix::quantize(format, rows, cols, &data, imp)?,
            };
            for (r, row) in data.chunks_exact_mut(cols).enumerate() {
                q.dequantize_row(r, row);
            }
            bits += format.bits_per_weight(cols) * n as f64;
        }
        if rotate != 0 {
            rotate_rows(&mut data, cols, rotate, false);
        }
        let fb = factor.is_some();
        eprintln!("{} {rows}x{cols} {spec}{} {:.1}s", t.name, if fb { "+fb" } else { "" }, start.elapsed().as_secs_f32());
        w.tensor(t.name.clone(), t.ty, &t.dims, data.iter().flat_map(|x| x.to_le_bytes()).collect())?;
    }
    eprintln!("bits per weight: {:.4}", bits / params);
    w.write(output)?;
    Ok(())
}
