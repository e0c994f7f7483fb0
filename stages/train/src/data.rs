//! Paired training data: pooled vectors (`[N, Dv]` images, `[N, Dt]` texts, row `i` of each is
//! the same study) or token sequences with masks (for the fusion variant). Rows are fetched by
//! index, so a source can live in memory, on the GPU, or (later) be read lazily from a table.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A mini-batch of pairs.
pub enum Batch {
    /// `image [B, Dv]`, `text [B, Dt]`.
    Pooled { image: Tensor, text: Tensor },
    /// `image [B, Lp, Dv]` patch tokens with `image_mask [B, Lp]`, `text [B, Lt, Dt]` token
    /// states with `text_mask [B, Lt]` (bool, true = a real token; padding holds anything).
    Tokens {
        image: Tensor,
        image_mask: Tensor,
        text: Tensor,
        text_mask: Tensor,
    },
}

impl Batch {
    pub fn len(&self) -> i64 {
        match self {
            Batch::Pooled { image, .. } | Batch::Tokens { image, .. } => image.size()[0],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_device(&self, device: Device) -> Batch {
        self.map(|t| t.to_device(device))
    }

    /// The same kind of batch with `f` applied to each of its tensors.
    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Batch {
        match self {
            Batch::Pooled { image, text } => Batch::Pooled {
                image: f(image),
                text: f(text),
            },
            Batch::Tokens {
                image,
                image_mask,
                text,
                text_mask,
            } => Batch::Tokens {
                image: f(image),
                image_mask: f(image_mask),
                text: f(text),
                text_mask: f(text_mask),
            },
        }
    }

    /// Token view: pooled vectors become sequences of length one with a true mask.
    pub fn as_tokens(&self) -> (Tensor, Tensor, Tensor, Tensor) {
        match self {
            Batch::Pooled { image, text } => {
                let b = image.size()[0];
                let ones = Tensor::ones([b, 1], (Kind::Bool, image.device()));
                (
                    image.unsqueeze(1),
                    ones.shallow_clone(),
                    text.unsqueeze(1),
                    ones,
                )
            }
            Batch::Tokens {
                image,
                image_mask,
                text,
                text_mask,
            } => (
                image.shallow_clone(),
                image_mask.shallow_clone(),
                text.shallow_clone(),
                text_mask.shallow_clone(),
            ),
        }
    }

    fn select(&self, rows: &Tensor) -> Batch {
        self.map(|t| t.index_select(0, &rows.to_device(t.device())))
    }
}

/// Where training and validation pairs come from.
pub trait PairSource {
    /// Number of pairs.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Width of the image vectors (or tokens) and of the text vectors (or tokens).
    fn dims(&self) -> (i64, i64);
    /// The pairs at `rows`, in that order, on `device`.
    fn batch(&self, rows: &[i64], device: Device) -> Result<Batch>;
}

/// All pairs in tensors (CPU or GPU memory).
pub struct InMemoryPairs {
    all: Batch,
}

impl InMemoryPairs {
    /// Pooled pairs: `image [N, Dv]`, `text [N, Dt]`, float32.
    pub fn pooled(image: Tensor, text: Tensor) -> Result<Self> {
        let (si, st) = (image.size(), text.size());
        if si.len() != 2 || st.len() != 2 || si[0] != st[0] {
            return Err(Error::InputShape {
                what: "pooled pairs (image, text)".into(),
                found: format!("{si:?} and {st:?}"),
                expected: "image [N, Dv] and text [N, Dt] with the same N".into(),
            });
        }
        Ok(InMemoryPairs {
            all: Batch::Pooled {
                image: image.to_kind(Kind::Float),
                text: text.to_kind(Kind::Float),
            },
        })
    }

    /// Token pairs: `image [N, Lp, Dv]` + `image_mask [N, Lp]`, `text [N, Lt, Dt]` +
    /// `text_mask [N, Lt]`. Every row needs at least one real token in each modality.
    pub fn tokens(
        image: Tensor,
        image_mask: Tensor,
        text: Tensor,
        text_mask: Tensor,
    ) -> Result<Self> {
        let (si, sim, st, stm) = (
            image.size(),
            image_mask.size(),
            text.size(),
            text_mask.size(),
        );
        if si.len() != 3 || st.len() != 3 || sim != si[..2] || stm != st[..2] || si[0] != st[0] {
            return Err(Error::InputShape {
                what: "token pairs (image, image_mask, text, text_mask)".into(),
                found: format!("{si:?}, {sim:?}, {st:?}, {stm:?}"),
                expected: "image [N, Lp, Dv], image_mask [N, Lp], text [N, Lt, Dt], text_mask \
                           [N, Lt]"
                    .into(),
            });
        }
        let image_mask = image_mask.to_kind(Kind::Bool);
        let text_mask = text_mask.to_kind(Kind::Bool);
        for (m, what) in [(&image_mask, "image"), (&text_mask, "text")] {
            let empty = m
                .any_dim(1, false)
                .logical_not()
                .sum(Kind::Int64)
                .int64_value(&[]);
            if empty > 0 {
                return Err(Error::Data(format!(
                    "{empty} rows have no real {what} token (all-false mask)"
                )));
            }
        }
        Ok(InMemoryPairs {
            all: Batch::Tokens {
                image: image.to_kind(Kind::Float),
                image_mask,
                text: text.to_kind(Kind::Float),
                text_mask,
            },
        })
    }

    /// Moves every pair to `device` once (on a GPU, batches are then gathered there).
    pub fn to_device(self, device: Device) -> Self {
        InMemoryPairs {
            all: self.all.to_device(device),
        }
    }

    pub fn all(&self) -> &Batch {
        &self.all
    }
}

impl PairSource for InMemoryPairs {
    fn len(&self) -> usize {
        self.all.len() as usize
    }

    fn dims(&self) -> (i64, i64) {
        match &self.all {
            Batch::Pooled { image, text } => (image.size()[1], text.size()[1]),
            Batch::Tokens { image, text, .. } => (image.size()[2], text.size()[2]),
        }
    }

    fn batch(&self, rows: &[i64], device: Device) -> Result<Batch> {
        let n = self.len() as i64;
        if let Some(bad) = rows.iter().find(|&&r| r < 0 || r >= n) {
            return Err(Error::Data(format!("row {bad} out of range (0..{n})")));
        }
        Ok(self.all.select(&Tensor::from_slice(rows)).to_device(device))
    }
}
