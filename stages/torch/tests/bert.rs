//! BERT-family text encoders against transformers' `BertModel` (fixtures from
//! tools/encoders_make_fixtures.py) in every file format and naming layout, and the real
//! all-MiniLM-L6-v2 against its golden values (HF transformers on the same folder:
//! data/golden/minilm.json, tools/make_golden_values.py).

mod common;

use std::path::Path;

use adaptor_torch::bert::{TextEncoder, TextPooling};
use common::*;
use tch::{Device, Kind, Tensor};

fn texts() -> Vec<String> {
    let path = fixtures().join("bert-texts.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Error budget of the BERT fixture model: float32 matmuls over at most a few hundred terms,
/// softmax attention and LayerNorm in each block, tanh pooler. Another kernel order costs ~1e-6
/// of the values' magnitude per block: rtol 2e-5 leaves a margin of more than 10× over what
/// another instruction set or thread count gives, while a weight moved by 1e-3 is caught
/// (asserted below).
const BERT: Tol = Tol::new(2e-5, 1e-7);

/// Every comparison of the encoder in `dir` with transformers' outputs; token ids, masks and
/// type ids must be equal.
fn bert_comparisons(dir: &Path, label: &str) -> Vec<Comparison> {
    let enc = TextEncoder::load(dir, 112, Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let r = reference("bert-reference.safetensors");
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = enc.tokenizer.encode(&refs).unwrap();
    let want_ids = to_vec_i64(&r["input_ids"]);
    assert_eq!(
        batch.ids, want_ids,
        "{label}: token ids differ from transformers'"
    );
    assert_eq!(
        batch.mask,
        to_vec_i64(&r["attention_mask"]),
        "{label}: attention mask"
    );
    assert_eq!(
        batch.type_ids,
        to_vec_i64(&r["token_type_ids"]),
        "{label}: token type ids"
    );
    assert_eq!(batch.len, 112, "the long text is truncated to max_length");
    let mut out = Vec::new();
    for (pooling, key) in [
        (TextPooling::Pooler, "pooler"),
        (TextPooling::Cls, "cls"),
        (TextPooling::Mean, "mean"),
        (TextPooling::Tokens, "tokens"),
    ] {
        let (got, _) = enc.embed_tokens(&batch, pooling).unwrap();
        out.push(compare(format!("{label} {key}"), &got, &r[key], BERT));
    }
    // A batch padded to another length gives the same vectors (masks are applied).
    let (short, _) = enc.embed(&refs[..3], TextPooling::Pooler).unwrap();
    out.push(compare(
        format!("{label} pooler (short batch)"),
        &short,
        &r["pooler_short"],
        BERT,
    ));
    out
}

fn check_layout(dir: &str) {
    assert_all_within(
        &bert_comparisons(&fixtures().join(dir), dir),
        &encoders_machine(),
    );
}

#[test]
fn bert_parity_catches_a_perturbed_weight() {
    // The first tensor in name order, before every layer.
    let name = "embeddings.LayerNorm.bias";
    let tmp = perturbed_copy(&fixtures().join("bert-safetensors"), name);
    assert_detects(
        &format!("bert `{name}`"),
        &bert_comparisons(tmp.path(), "perturbed bert"),
    );
}

#[test]
fn safetensors_without_prefix_with_tokenizer_json() {
    check_layout("bert-safetensors");
}

#[test]
fn sharded_safetensors_with_bert_prefix_and_heads_vocab_txt_only() {
    check_layout("bert-sharded");
}

#[test]
fn pytorch_bin_zip_with_prefix_heads_and_no_model_type() {
    check_layout("bert-bin");
}

#[test]
fn legacy_pytorch_bin_with_gamma_beta_names_and_cxr_bert_type() {
    check_layout("bert-bin-legacy");
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn real_minilm_reproduces_its_golden_values() {
    let enc = TextEncoder::load(&minilm(), 112, Device::Cpu, Kind::Float).unwrap();
    let golden = golden("minilm.json");
    let owned: Vec<String> = serde_json::from_value(golden["sentences"].clone()).unwrap();
    let sentences: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (emb, _) = enc.embed(&sentences, TextPooling::Mean).unwrap();
    let shape: Vec<i64> = serde_json::from_value(golden["shape"].clone()).unwrap();
    assert_eq!(emb.size(), shape);
    let emb = &emb / emb.norm_scalaropt_dim(2, [1], true);
    let rows: Vec<Vec<f32>> = (0..4).map(|i| to_vec_f32(&emb.get(i))).collect();
    for (j, want) in golden["cosine_with_first"].as_object().unwrap() {
        let (j, want): (usize, f64) = (j.parse().unwrap(), want.as_f64().unwrap());
        let got = cos(&rows[0], &rows[j]);
        assert!(
            (got - want).abs() < 1e-4,
            "cos(0,{j}) = {got:.6}, golden {want}"
        );
    }
    let dims = golden["first_dims_of_first"].as_array().unwrap();
    assert!(!dims.is_empty());
    for (i, want) in dims.iter().map(|v| v.as_f64().unwrap()).enumerate() {
        let got = rows[0][i] as f64;
        assert!(
            (got - want).abs() < 1e-5,
            "dim {i} of sentence 0 = {got:.6}, golden {want}"
        );
    }
    // Each sentence alone (no padding at all) gives the same vector as in the padded batch.
    let (alone, _) = enc.embed(&sentences[3..], TextPooling::Mean).unwrap();
    let alone = &alone / alone.norm_scalaropt_dim(2, [1], true);
    // The same model on the same machine, only the padding differs: unit vectors, one kernel
    // order against another.
    assert_all_within(
        &[compare(
            "sentence 3 alone vs in batch",
            &alone.get(0),
            &emb.get(3),
            Tol::new(1e-5, 0.0),
        )],
        "this machine",
    );
}

#[test]
fn minilm_file_padding_is_ignored() {
    // The file pads to 128; with it, the masks would still be right but every batch would cost
    // 128 positions. Per-batch padding: the longest of these is 7 tokens.
    let enc = TextEncoder::load(&minilm(), 112, Device::Cpu, Kind::Float).unwrap();
    let b = enc
        .tokenizer
        .encode(&["That is a happy person", "Hi"])
        .unwrap();
    assert_eq!(b.len, 7);
    assert_eq!(&b.mask[7..], &[1, 1, 1, 0, 0, 0, 0]);
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let err = TextEncoder::load(&fixtures().join("dinov2"), 112, Device::Cpu, Kind::Float)
        .err()
        .expect("a DINOv2 folder is not a text encoder")
        .to_string();
    assert!(
        err.ends_with("config.json: unknown model_type `dinov2` (supported: bert, cxr-bert)"),
        "{err}"
    );
}

#[test]
fn missing_and_misshapen_tensors_are_named_with_their_expected_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("bert-safetensors");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "encoder.layer.1.attention.self.key.weight");
    for (n, t) in tensors.iter_mut() {
        if n == "encoder.layer.0.intermediate.dense.weight" {
            *t = t.transpose(0, 1).contiguous();
        }
    }
    let path = tmp.path().join("model.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = TextEncoder::load(tmp.path(), 112, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: tensor `encoder.layer.0.intermediate.dense.weight` has shape [32, 64], expected [64, 32]",
            path.display()
        )
    );
    tensors.retain(|(n, _)| n != "encoder.layer.0.intermediate.dense.weight");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = TextEncoder::load(tmp.path(), 112, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: tensor `encoder.layer.0.intermediate.dense.weight` is missing (expected shape [64, 32])",
            path.display()
        )
    );
}

#[test]
fn max_length_beyond_the_position_table_is_refused() {
    let err = TextEncoder::load(
        &fixtures().join("bert-safetensors"),
        129,
        Device::Cpu,
        Kind::Float,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("max_length 129 exceeds the model's max_position_embeddings 128"),
        "{err}"
    );
}

#[test]
fn bf16_runs_close_to_fp32() {
    let enc = TextEncoder::load(
        &fixtures().join("bert-safetensors"),
        112,
        Device::Cpu,
        Kind::BFloat16,
    )
    .unwrap();
    let r = reference("bert-reference.safetensors");
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (got, _) = enc.embed(&refs, TextPooling::Mean).unwrap();
    assert_eq!(
        got.kind(),
        Kind::Float,
        "tables are float32 whatever the precision"
    );
    // bf16 keeps 8 bits of mantissa (2^-8 ≈ 4e-3 relative per rounding) through every layer.
    assert_encoder_parity("bf16 mean", &got, &r["mean"], Tol::new(0.05, 0.0));
}
