//! Where the image encode loop's pixels come from: the raw files, decoded here (JPEG, PNG, DICOM
//! through `stages::images`), or a `preprocess` artifact's 8-bit images, decoded once upstream
//! for every backbone. Both give the same 8-bit square image when the artifact's size is the
//! backbone's `resize`, so the same embeddings.

use std::ops::Range;
use std::path::PathBuf;

use rayon::prelude::*;
use stages::images::{self, Gray8};
use stages::preprocess::PreprocessedImages;

use crate::error::Result;
use crate::preprocess::Preprocess;

/// The images of the rows an encode loop encodes (row `i` of the loop is `files[i]`, or row
/// `first + i` of the preprocess artifact).
#[derive(Clone, Copy)]
pub enum ImageSource<'a> {
    Files(&'a [PathBuf]),
    Preprocessed {
        images: &'a PreprocessedImages,
        first: usize,
    },
}

impl ImageSource<'_> {
    /// Rows `r` through `pre` into one buffer (`r.len() · pre.len()` floats), in parallel on the
    /// current rayon pool; `offset(i)`: row `i`'s crop window (see [`Preprocess::apply_at`]).
    pub fn load(
        &self,
        pre: &Preprocess,
        r: Range<usize>,
        offset: &(impl Fn(usize) -> Option<(u32, u32)> + Sync),
    ) -> Result<Vec<f32>> {
        let per = pre.len();
        let mut buf = vec![0f32; r.len() * per];
        match *self {
            ImageSource::Files(files) => buf
                .par_chunks_mut(per)
                .zip(r.into_par_iter())
                .try_for_each(|(dst, i)| -> Result<()> {
                    dst.copy_from_slice(&pre.load_at(&files[i], offset(i))?);
                    Ok(())
                })?,
            ImageSource::Preprocessed { images, first } => {
                let bytes = images.read_rows(first + r.start..first + r.end)?;
                let side = images.size();
                let px = (side as usize).pow(2);
                buf.par_chunks_mut(per)
                    .zip(bytes.par_chunks(px))
                    .zip(r.into_par_iter())
                    .for_each(|((dst, src), i)| {
                        let gray = Gray8 {
                            width: side,
                            height: side,
                            data: src.to_vec(),
                        };
                        dst.copy_from_slice(&pre.from_gray8(&gray, offset(i)));
                    });
            }
        }
        Ok(buf)
    }

    /// Image files this source decodes per row (a log line shows that a preprocess artifact
    /// decodes none).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Files(f) => format!("decoding {} image files", f.len()),
            ImageSource::Preprocessed { images, .. } => format!(
                "reading {} px images preprocessed once ({}), decoding none",
                images.size(),
                images.dir().display()
            ),
        }
    }
}

impl Preprocess {
    /// Everything after the decode, from an 8-bit square image of any size: resized to this
    /// preprocessing's `resize` first when it is another size (MGCA's `resize_img` of a square:
    /// `INTER_AREA`), then [`Preprocess::apply_at`]. At the same size the image is what
    /// [`images::load_mgca`] gives, so the output is bit-identical to [`Preprocess::load_at`].
    pub fn from_gray8(&self, gray: &Gray8, offset: Option<(u32, u32)>) -> Vec<f32> {
        let (resize, crop) = self.sizes();
        if gray.width == resize && gray.height == resize {
            self.apply_at(gray, crop, offset)
        } else {
            self.apply_at(&images::resize_img(gray, resize), crop, offset)
        }
    }
}
