//! `adaptor embed text|image`: every option of the libtorch worker's `embed`, declared, validated
//! and documented here (with the encode stages' own choices, ranges and descriptions), then
//! handed to `adaptor-torch embed` as explicit arguments ([`EmbedCommand::worker_args`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{value_parser, Args, Subcommand};
use stages::encode::{self, DEVICES, IMAGE_POOLINGS, NORMALIZATIONS, PRECISIONS, TEXT_POOLINGS};
use stages::kinds::Declaration;

/// What `embed` does: texts or images, each with its own options.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum EmbedCommand {
    /// One text per line of a file through a BERT-family backbone; `key` is the line number
    /// from 0. Writes `key` and `embedding` (or `tokens` and `mask` with --pooling tokens).
    Text(EmbedText),
    /// Image files (JPEG, PNG, DICOM) through a DINOv2 or ResNet-AE backbone; `key` is the file
    /// name. Writes `key` and `embedding` (or `tokens` and `mask` with --pooling tokens).
    Image(EmbedImage),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct EmbedText {
    /// A BERT-family Hugging Face folder (config.json, vocab.txt, model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub backbone: PathBuf,
    #[arg(long, default_value = "pooler", value_parser = PossibleValuesParser::new(TEXT_POOLINGS),
          help = text_doc("pooling"))]
    pub pooling: String,
    #[arg(long, default_value_t = 112, value_parser = value_parser!(u32).range(2..=8192),
          help = text_doc("max_length"))]
    pub max_length: u32,
    /// The texts: a UTF-8 file, one text per line.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The Parquet table to write.
    #[arg(long, value_name = "OUT.parquet")]
    pub output: PathBuf,
    #[command(flatten)]
    pub run: EmbedRun,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct EmbedImage {
    /// A DINOv2 folder or a ResNet-AE folder (`adaptor-torch convert-resnet-ae` writes one).
    #[arg(long, value_name = "DIR")]
    pub backbone: PathBuf,
    /// The backbone's architecture (default: the folder's config.json `model_type`).
    #[arg(long, value_parser = PossibleValuesParser::new(encode::IMAGE_BACKBONES))]
    pub kind: Option<String>,
    #[arg(long, default_value = "auto", value_parser = PossibleValuesParser::new(IMAGE_POOLINGS),
          help = image_doc("pooling"))]
    pub pooling: String,
    #[arg(long, default_value = "imagenet", value_parser = PossibleValuesParser::new(NORMALIZATIONS),
          help = image_doc("normalize"))]
    pub normalize: String,
    #[arg(long, default_value_t = 256, value_parser = value_parser!(u32).range(1..=16384),
          help = image_doc("resize"))]
    pub resize: u32,
    #[arg(long, default_value_t = 224, value_parser = value_parser!(u32).range(1..=16384),
          help = image_doc("image_size"))]
    pub image_size: u32,
    /// The image files (names must be unique: the name is the row's key).
    #[arg(long, value_name = "IMG", num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// The Parquet table to write.
    #[arg(long, value_name = "OUT.parquet")]
    pub output: PathBuf,
    #[command(flatten)]
    pub run: EmbedRun,
}

/// How the worker runs, for both modalities (the encode stages' run settings, without sharding).
#[derive(Args, Debug, Clone, PartialEq)]
pub struct EmbedRun {
    #[arg(long, default_value = "auto", value_parser = PossibleValuesParser::new(DEVICES),
          help = text_doc("device"))]
    pub device: String,
    #[arg(long, default_value = "fp32", value_parser = PossibleValuesParser::new(PRECISIONS),
          help = text_doc("precision"))]
    pub precision: String,
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(1..=65536),
          help = text_doc("batch_size"))]
    pub batch_size: u32,
    /// CPU threads (default: all cores).
    #[arg(long, value_parser = value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// The description of the `encode-text` parameter `name`: one text for `adaptor stages` and here
/// (kept as the stage writes it: most start with a value name, which stays lower case).
fn text_doc(name: &str) -> &'static str {
    param_doc(&encode::TEXT, name)
}

fn image_doc(name: &str) -> &'static str {
    param_doc(&encode::IMAGE, name)
}

fn param_doc(stage: &Declaration, name: &str) -> &'static str {
    (stage.params)()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{} has no parameter `{name}`", stage.kind))
        .doc
}

impl EmbedCommand {
    /// The arguments of `adaptor-torch`: `embed text|image` and every option spelled out, the
    /// defaults too, so that the worker runs exactly what was validated here.
    pub fn worker_args(&self) -> Vec<OsString> {
        let mut a = ArgList(Vec::new());
        a.flag("embed");
        let run = match self {
            EmbedCommand::Text(t) => {
                a.flag("text");
                a.opt("--backbone", &t.backbone);
                a.opt("--pooling", &t.pooling);
                a.opt("--max-length", t.max_length.to_string());
                a.opt("--input", &t.input);
                a.opt("--output", &t.output);
                &t.run
            }
            EmbedCommand::Image(i) => {
                a.flag("image");
                a.opt("--backbone", &i.backbone);
                if let Some(kind) = &i.kind {
                    a.opt("--kind", kind);
                }
                a.opt("--pooling", &i.pooling);
                a.opt("--normalize", &i.normalize);
                a.opt("--resize", i.resize.to_string());
                a.opt("--image-size", i.image_size.to_string());
                for input in &i.input {
                    a.opt("--input", input);
                }
                a.opt("--output", &i.output);
                &i.run
            }
        };
        a.opt("--device", &run.device);
        a.opt("--precision", &run.precision);
        a.opt("--batch-size", run.batch_size.to_string());
        if let Some(t) = run.threads {
            a.opt("--threads", t.to_string());
        }
        a.0
    }
}

/// An argument list being built.
struct ArgList(Vec<OsString>);

impl ArgList {
    fn flag(&mut self, s: &str) {
        self.0.push(s.into());
    }

    /// `--name=value`: one argument, so that a value starting with `-` stays a value.
    fn opt(&mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) {
        let mut arg = OsString::from(name);
        arg.push("=");
        arg.push(value);
        self.0.push(arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Embed {
        #[command(subcommand)]
        what: EmbedCommand,
    }

    fn parse(args: &str) -> Result<EmbedCommand, clap::Error> {
        Embed::try_parse_from(["embed"].into_iter().chain(args.split_whitespace())).map(|e| e.what)
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn the_worker_gets_every_option_spelled_out() {
        let image =
            parse("image --backbone dino --input a.png b.png --output o.parquet --threads 2")
                .unwrap();
        assert_eq!(
            strings(image.worker_args()),
            [
                "embed",
                "image",
                "--backbone=dino",
                "--pooling=auto",
                "--normalize=imagenet",
                "--resize=256",
                "--image-size=224",
                "--input=a.png",
                "--input=b.png",
                "--output=o.parquet",
                "--device=auto",
                "--precision=fp32",
                "--batch-size=64",
                "--threads=2",
            ]
        );
        let text = parse("text --backbone bert --input t.txt --output o.parquet --pooling mean --max-length 64 --device cpu --precision bf16 --batch-size 8")
            .unwrap();
        assert_eq!(
            strings(text.worker_args()),
            [
                "embed",
                "text",
                "--backbone=bert",
                "--pooling=mean",
                "--max-length=64",
                "--input=t.txt",
                "--output=o.parquet",
                "--device=cpu",
                "--precision=bf16",
                "--batch-size=8",
            ]
        );
    }

    #[test]
    fn values_outside_the_stages_choices_and_ranges_are_refused() {
        for (args, says) in [
            (
                "text --backbone b --input t --output o --pooling max",
                "invalid value 'max' for '--pooling",
            ),
            (
                "text --backbone b --input t --output o --max-length 1",
                "1 is not in 2..=8192",
            ),
            (
                "image --backbone b --input i --output o --batch-size 0",
                "0 is not in 1..=65536",
            ),
            (
                "image --backbone b --input i --output o --device tpu",
                "invalid value 'tpu' for '--device",
            ),
            (
                "image --backbone b --input i --output o --kind vit",
                "invalid value 'vit' for '--kind",
            ),
            ("image --backbone b --output o", "--input <IMG>..."),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(says), "{args}: {e}");
        }
    }
}
