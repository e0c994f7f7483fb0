//! `shard = "i/n"`: which contiguous part of the rows a shard instance of a sharded kind (the
//! encode stages) works on, and the arithmetic that makes the n parts cover every row once.

use std::ops::Range;

/// `shard = "i/n"`: the i-th of n contiguous row ranges (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not of the form i/n (e.g. 0/4)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{i}` is not a shard index"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{n}` is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: the index must be in 0..{count}"));
        }
        Ok(Shard { index, count })
    }

    /// This shard's rows of a table of `rows` rows: contiguous, in order, covering all rows
    /// exactly once over the n shards.
    pub fn range(&self, rows: usize) -> Range<usize> {
        let at = |i: u32| (rows as u128 * i as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_all_rows_once_in_order() {
        for rows in [0usize, 1, 7, 100] {
            for n in 1..=5u32 {
                let mut next = 0;
                for i in 0..n {
                    let r = Shard { index: i, count: n }.range(rows);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn shard_strings_are_checked() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        assert!(Shard::parse("4/4").unwrap_err().contains("0..4"));
        assert!(Shard::parse("1").is_err());
        assert!(Shard::parse("0/0").is_err());
    }
}
