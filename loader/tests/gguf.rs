//! The GGUF reader on files written here: well-formed ones (versions 2 and 3, every value type, alignment) read
//! back exactly, and malformed ones (truncated, bad magic or version, huge counts, offsets past the end, unknown
//! types) give an error that names the file and the field, never a panic.

use proptest::prelude::*;
use tern_core::TensorType;
use tern_loader::{Bytes, Error, GgufFile, GgufWriter, MetaValue, ModelSource};

const PATH: &str = "test.gguf";

fn all_value_types() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.u64", MetaValue::U64(1 << 60)),
        ("t.i64", MetaValue::I64(-(1 << 60))),
        ("t.f32", MetaValue::F32(1.5e-5)),
        ("t.f64", MetaValue::F64(-2.25)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.string", MetaValue::String("héllo wörld".into())),
        ("t.strings", MetaValue::Array(vec![MetaValue::String("a".into()), MetaValue::String("".into())])),
        ("t.floats", MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(-1.0)])),
        (
            "t.nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
                MetaValue::Array(vec![MetaValue::I32(3)]),
            ]),
        ),
    ]
}

/// A file with every metadata value type and three tensors of different types.
fn sample() -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    for (k, v) in all_value_types() {
        w.metadata(k, v);
    }
    let data: Vec<Vec<u8>> = vec![
        (0..64 * 4).map(|i| i as u8).collect(),           // F32 [64]
        (0..2 * 20).map(|i| (i * 7) as u8).collect(),     // Q4_1 [32, 2]
        (0..3 * 34).map(|i| (i * 3 + 1) as u8).collect(), // Q8_0 [32, 3]
    ];
    w.tensor("a", TensorType::F32, &[64], data[0].clone()).unwrap();
    w.tensor("b", TensorType::Q4_1, &[32, 2], data[1].clone()).unwrap();
    w.tensor("c", TensorType::Q8_0, &[32, 3], data[2].clone()).unwrap();
    (w, data)
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, Error> {
    GgufFile::parse(PATH, Bytes::Owned(bytes))
}

fn sample_bytes() -> Vec<u8> {
    sample().0.to_bytes().unwrap()
}

/// Byte position of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// Where tensor `name`'s info starts (its name's length prefix).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    // Skip metadata: tensor infos follow all keys, so search after the last key.
    let after = find(bytes, b"t.nested");
    after + find(&bytes[after..], &needle)
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn reads_back_what_was_written() {
    let (w, data) = sample();
    let f = parse(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    for (k, v) in all_value_types() {
        assert_eq!(f.metadata.get(k), Some(&v), "metadata {k}");
    }
    assert_eq!(f.tensors.len(), 3);
    for (t, (name, ty, dims)) in f.tensors.iter().zip([
        ("a", TensorType::F32, vec![64]),
        ("b", TensorType::Q4_1, vec![32, 2]),
        ("c", TensorType::Q8_0, vec![32, 3]),
    ]) {
        assert_eq!((t.name.as_str(), t.ty, &t.dims), (name, ty, &dims));
        assert_eq!(t.offset % 32, 0, "tensor {name} is aligned");
    }
    for (t, want) in f.tensors.iter().zip(&data) {
        assert_eq!(f.data(t), &want[..]);
    }
    assert_eq!(f.tensor("b").unwrap().matrix_shape(), (2, 32));
}

#[test]
fn version_2_and_custom_alignment() {
    let (mut w, data) = sample();
    w.metadata("general.alignment", MetaValue::U32(64));
    let mut bytes = w.to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = parse(bytes).unwrap();
    assert_eq!((f.version, f.alignment), (2, 64));
    for (t, want) in f.tensors.iter().zip(&data) {
        assert_eq!(t.offset % 64, 0);
        assert_eq!(f.data(t), &want[..]);
    }
}

#[test]
fn opens_a_file_on_disk_and_maps_it() {
    let path = std::env::temp_dir().join(format!("tern-loader-test-{}.gguf", std::process::id()));
    sample().0.write(&path).unwrap();
    let src = ModelSource::open(&path).unwrap();
    assert_eq!(src.metadata().str("general.architecture").unwrap(), "llama");
    assert_eq!(src.tensor("c").unwrap().bytes, &sample().1[2][..]);
    let missing = src.tensor("nope").unwrap_err().to_string();
    assert!(missing.contains("nope") && missing.contains(&*path.display().to_string()), "{missing}");
    std::fs::remove_file(&path).unwrap();
    let gone = ModelSource::open(&path).unwrap_err().to_string();
    assert!(gone.contains(&*path.display().to_string()), "{gone}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_bytes();
    for len in 0..bytes.len() {
        let e = parse(bytes[..len].to_vec()).expect_err("a truncated file must not parse");
        assert!(message(e).starts_with(PATH), "cut at {len}");
    }
}

#[test]
fn bad_magic() {
    let mut bytes = sample_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let e = parse(bytes).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }));
    assert!(message(e).contains("not a GGUF file"));
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, u32::MAX] {
        let mut bytes = sample_bytes();
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        let e = parse(bytes).unwrap_err();
        assert!(matches!(e, Error::UnsupportedVersion { version, .. } if version == v), "version {v}");
    }
}

#[test]
fn huge_counts() {
    // Tensor count, then key count.
    for (at, what) in [(8, "tensor count"), (16, "metadata key count")] {
        for n in [1u64 << 40, u64::MAX] {
            let mut bytes = sample_bytes();
            bytes[at..at + 8].copy_from_slice(&n.to_le_bytes());
            let e = message(parse(bytes).unwrap_err());
            assert!(e.contains(what), "{e}");
        }
    }
}

#[test]
fn huge_string_and_array_lengths() {
    let mut bytes = sample_bytes();
    let at = find(&bytes, b"t.string") + "t.string".len() + 4; // past the name and the value type
    bytes[at..at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let e = message(parse(bytes).unwrap_err());
    assert!(e.contains("t.string") && e.contains("limit"), "{e}");

    let mut bytes = sample_bytes();
    let at = find(&bytes, b"t.floats") + "t.floats".len() + 4 + 4; // name, type 9, element type
    bytes[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    let e = message(parse(bytes).unwrap_err());
    assert!(e.contains("array \"t.floats\""), "{e}");

    // A key name longer than the file.
    let mut bytes = sample_bytes();
    bytes[24..32].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(message(parse(bytes).unwrap_err()).contains("name of metadata key 0"));
}

#[test]
fn unknown_value_type() {
    let mut bytes = sample_bytes();
    let at = find(&bytes, b"t.u8") + 4;
    bytes[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    let e = parse(bytes).unwrap_err();
    assert!(matches!(&e, Error::UnknownValueType { key, ty: 13, .. } if key == "t.u8"), "{e}");
}

#[test]
fn unknown_tensor_type() {
    let mut bytes = sample_bytes();
    let at = tensor_info_at(&bytes, "b") + 8 + 1 + 4 + 2 * 8; // name, n_dims, two dims
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), TensorType::Q4_1 as u32);
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K: not a type tern reads
    let e = parse(bytes).unwrap_err();
    assert!(matches!(&e, Error::UnknownTensorType { tensor, ty: 12, .. } if tensor == "b"), "{e}");
}

#[test]
fn offsets_past_the_end_and_misaligned() {
    let offset_at = |bytes: &[u8]| tensor_info_at(bytes, "c") + 8 + 1 + 4 + 2 * 8 + 4;
    let mut bytes = sample_bytes();
    let at = offset_at(&bytes);
    bytes[at..at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let e = parse(bytes).unwrap_err();
    assert!(matches!(&e, Error::TensorOutOfBounds { tensor, .. } if tensor == "c"), "{e}");

    let mut bytes = sample_bytes();
    bytes[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(parse(bytes).unwrap_err(), Error::TensorOutOfBounds { .. }));

    let mut bytes = sample_bytes();
    bytes[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    let e = message(parse(bytes).unwrap_err());
    assert!(e.contains("\"c\"") && e.contains("alignment"), "{e}");
}

#[test]
fn bad_dimensions() {
    let dims_at = |bytes: &[u8]| tensor_info_at(bytes, "b") + 8 + 1;
    for (n_dims, want) in [(0u32, "0 dimensions"), (5, "5 dimensions")] {
        let mut bytes = sample_bytes();
        let at = dims_at(&bytes);
        bytes[at..at + 4].copy_from_slice(&n_dims.to_le_bytes());
        let e = message(parse(bytes).unwrap_err());
        assert!(e.contains(want) && e.contains("\"b\""), "{e}");
    }
    // A row length that is not a whole number of Q4_1 blocks.
    let mut bytes = sample_bytes();
    let at = dims_at(&bytes) + 4;
    bytes[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(message(parse(bytes).unwrap_err()).contains("not a multiple"));
    // Dimensions whose product overflows.
    let mut bytes = sample_bytes();
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bytes[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse(bytes).is_err());
}

#[test]
fn bad_strings_bools_nesting_and_alignment() {
    let mut bytes = sample_bytes();
    let at = find(&bytes, "héllo".as_bytes());
    bytes[at + 1] = 0xff; // breaks the UTF-8 of é
    assert!(matches!(parse(bytes).unwrap_err(), Error::BadString { .. }));

    let mut bytes = sample_bytes();
    let at = find(&bytes, b"t.bool") + "t.bool".len() + 4;
    bytes[at] = 2;
    assert!(message(parse(bytes).unwrap_err()).contains("bool"));

    let mut w = GgufWriter::new();
    let deep = MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(1)])])]);
    w.metadata("deep", deep);
    assert!(message(parse(w.to_bytes().unwrap()).unwrap_err()).contains("nesting"));

    let mut w = GgufWriter::new();
    w.metadata("general.alignment", MetaValue::U32(48));
    assert!(message(parse(w.to_bytes().unwrap()).unwrap_err()).contains("general.alignment"));
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    assert!(w.tensor("x", TensorType::Q4_0, &[32], vec![0; 17]).is_err());
    assert!(w.tensor("x", TensorType::Q4_0, &[31], vec![0; 18]).is_err());
    w.tensor("x", TensorType::Q4_0, &[32], vec![0; 18]).unwrap();
    assert!(w.tensor("x", TensorType::Q4_0, &[32], vec![0; 18]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any corruption of a valid file parses or fails cleanly; what parses only views bytes inside the file.
    #[test]
    fn corrupted_files_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = sample_bytes();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let len = bytes.len();
        if let Ok(f) = parse(bytes) {
            for t in &f.tensors {
                prop_assert!(t.offset + t.size <= len);
                prop_assert_eq!(f.data(t).len(), t.size);
            }
        }
    }
}

/// tern's own formats: stored as I8 byte tensors with `tern.type.*` / `tern.dims.*` keys.
mod tern_tensors {
    use super::*;
    use tern_core::TernFormat;

    /// A T4 matrix of 2 rows of 64 and a T2 one of 3 rows of 32 (their bytes are arbitrary but sized right).
    fn tern_file() -> (GgufWriter, Vec<u8>, Vec<u8>) {
        let t4: Vec<u8> = (0..TensorType::T4.data_bytes(2, 64).unwrap()).map(|i| i as u8).collect();
        let t2: Vec<u8> = (0..TensorType::T2.data_bytes(3, 32).unwrap()).map(|i| (i * 5) as u8).collect();
        let mut w = GgufWriter::new();
        w.metadata("general.architecture", MetaValue::String("llama".into()));
        w.tensor("m4", TensorType::T4, &[64, 2], t4.clone()).unwrap();
        w.tensor("norm", TensorType::F32, &[32], vec![0; 128]).unwrap();
        w.tensor("m2", TensorType::T2, &[32, 3], t2.clone()).unwrap();
        (w, t4, t2)
    }

    #[test]
    fn round_trip_with_types_and_shapes() {
        let (w, t4, t2) = tern_file();
        let f = parse(w.to_bytes().unwrap()).unwrap();
        let m4 = f.tensor("m4").unwrap();
        assert_eq!((m4.ty, m4.dims.clone(), m4.size), (TensorType::T4, vec![64, 2], t4.len()));
        assert_eq!(f.data(m4), &t4[..]);
        let m2 = f.tensor("m2").unwrap();
        assert_eq!((m2.ty, m2.dims.clone()), (TensorType::T2, vec![32, 3]));
        assert_eq!(f.data(m2), &t2[..]);
        assert_eq!(f.metadata.str("tern.type.m4").unwrap(), "T4");
        assert_eq!(f.tensor("norm").unwrap().ty, TensorType::F32);
    }

    #[test]
    fn other_readers_see_i8_byte_tensors() {
        // What a GGUF reader that does not know tern sees: type I8 (24), one dimension of the byte count.
        let (w, t4, _) = tern_file();
        let bytes = w.to_bytes().unwrap();
        let mut needle = 2u64.to_le_bytes().to_vec();
        needle.extend_from_slice(b"m4");
        let at = find(&bytes, &needle) + 8 + 2;
        assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 1, "one dimension");
        assert_eq!(u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()), t4.len() as u64);
        assert_eq!(u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()), tern_loader::GGUF_I8);
    }

    #[test]
    fn exact_bits_per_weight() {
        assert_eq!(TensorType::T4.bits_per_weight(576), TernFormat::T4.bits_per_weight(576));
        assert_eq!(
            8 * TensorType::T3.data_bytes(7, 576).unwrap(),
            (TernFormat::T3.bits_per_weight(576) * 7.0 * 576.0).round() as usize
        );
    }

    fn with_key(key: &str, value: MetaValue) -> Result<GgufFile, Error> {
        let (mut w, ..) = tern_file();
        w.metadata(key, value);
        parse(w.to_bytes().unwrap())
    }

    #[test]
    fn unknown_tern_type_is_named() {
        let e = with_key("tern.type.m4", MetaValue::String("T5".into())).unwrap_err();
        assert!(matches!(&e, Error::UnknownTernType { tensor, name, .. } if tensor == "m4" && name == "T5"), "{e}");
        assert!(e.to_string().contains("T2, T3, T4, T8, TR2, TR3, TR4"), "{e}");
    }

    #[test]
    fn shape_that_does_not_match_the_bytes() {
        let e = message(with_key("tern.dims.m4", MetaValue::Array(vec![MetaValue::U64(64), MetaValue::U64(3)])).unwrap_err());
        assert!(e.contains("T4 3x64 takes") && e.contains("I8 dimensions"), "{e}");
        let e = message(with_key("tern.dims.m4", MetaValue::Array(vec![MetaValue::U64(48), MetaValue::U64(2)])).unwrap_err());
        assert!(e.contains("not a multiple of T4's block of 32"), "{e}");
        let e = message(with_key("tern.dims.m4", MetaValue::Array(vec![MetaValue::U64(64)])).unwrap_err());
        assert!(e.contains("two positive integers"), "{e}");
        let e = message(with_key("tern.dims.m4", MetaValue::String("64x2".into())).unwrap_err());
        assert!(e.contains("tern.dims.m4") && e.contains("array"), "{e}");
    }

    #[test]
    fn tern_key_on_a_tensor_of_another_type() {
        let e = message(with_key("tern.type.norm", MetaValue::String("T4".into())).unwrap_err());
        assert!(e.contains("\"norm\"") && e.contains("not I8"), "{e}");
    }

    #[test]
    fn i8_tensor_without_tern_keys_is_unknown() {
        let (w, ..) = tern_file();
        let mut bytes = w.to_bytes().unwrap();
        // Rename the key of m4 so the I8 tensor loses its description.
        let at = find(&bytes, b"tern.type.m4");
        bytes[at + 11] = b'x';
        let e = parse(bytes).unwrap_err();
        assert!(matches!(&e, Error::UnknownTensorType { tensor, ty: 24, .. } if tensor == "m4"), "{e}");
    }

    #[test]
    fn writer_checks_tern_sizes() {
        let mut w = GgufWriter::new();
        let e = w.tensor("m", TensorType::T3, &[64, 2], vec![0; 10]).unwrap_err().to_string();
        assert!(e.contains("10 bytes given"), "{e}");
        let e = w.tensor("m", TensorType::T3, &[64], vec![0; TensorType::T3.data_bytes(1, 64).unwrap()]).unwrap_err().to_string();
        assert!(e.contains("not [cols, rows]"), "{e}");
    }
}
