//! What a benchmark step updates: one tensor of a given size, or GPT-2 small's tensors.

use crate::error::{Error, Result};

/// GPT-2 small's parameter shapes (148 tensors, 124,439,808 parameters), in the order
/// `torch_baseline.py` lists them.
pub fn gpt2_small_shapes() -> Vec<Vec<u64>> {
    let mut shapes = vec![vec![50257, 768], vec![1024, 768]];
    for _ in 0..12 {
        shapes.extend([
            vec![768],
            vec![768],
            vec![768, 2304],
            vec![2304],
            vec![768, 768],
            vec![768],
            vec![768],
            vec![768],
            vec![768, 3072],
            vec![3072],
            vec![3072, 768],
            vec![768],
        ]);
    }
    shapes.extend([vec![768], vec![768]]);
    shapes
}

/// What one step updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One tensor of this many elements.
    Elements(u64),
    /// GPT-2 small's 148 tensors in one group.
    Gpt2Small,
}

impl Workload {
    /// Parses `16777216`, `2^24` or `gpt2`. Zero, negative and fractional sizes are errors
    /// that say so.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidConfig {
            optimizer: "benchmark",
            reason: format!("size `{text}` {reason}"),
        };
        let not_a_size = || bad("is not a number of elements, 2^k, or gpt2");
        if text.eq_ignore_ascii_case("gpt2") {
            return Ok(Workload::Gpt2Small);
        }
        let elements: u64 = match text.split_once('^') {
            Some(("2", k)) => {
                let k: u32 = k.parse().map_err(|_| not_a_size())?;
                1u64.checked_shl(k)
                    .ok_or_else(|| bad("is more elements than 64 bits count (at most 2^63)"))?
            }
            Some(_) => return Err(not_a_size()),
            None => {
                let digits = text.replace('_', "");
                match digits.parse::<i128>() {
                    Ok(n) if n <= 0 => {
                        return Err(bad("must be a positive number of elements"));
                    }
                    Ok(n) => {
                        u64::try_from(n).map_err(|_| bad("is more elements than 64 bits count"))?
                    }
                    Err(_) => match digits.parse::<f64>() {
                        Ok(x) if x.is_finite() && x > 0.0 => {
                            return Err(bad("is not a whole number of elements"));
                        }
                        Ok(_) => return Err(bad("must be a positive number of elements")),
                        Err(_) => return Err(not_a_size()),
                    },
                }
            }
        };
        Ok(Workload::Elements(elements))
    }

    /// How errors name it: "2^31 elements", "gpt2 (124439808 elements)".
    pub(crate) fn describe(&self) -> String {
        match self {
            Workload::Gpt2Small => format!("gpt2 ({} elements)", self.lens().iter().sum::<u64>()),
            other => format!("{} elements", other.label()),
        }
    }

    /// Tensor lengths.
    pub fn lens(&self) -> Vec<u64> {
        match self {
            Workload::Elements(n) => vec![*n],
            Workload::Gpt2Small => gpt2_small_shapes()
                .iter()
                .map(|s| s.iter().product())
                .collect(),
        }
    }

    /// How the tables name it.
    pub fn label(&self) -> String {
        match self {
            Workload::Elements(n) if n.is_power_of_two() => format!("2^{}", n.trailing_zeros()),
            Workload::Elements(n) => n.to_string(),
            Workload::Gpt2Small => "gpt2".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse() {
        assert_eq!(
            Workload::parse("2^24").unwrap(),
            Workload::Elements(1 << 24)
        );
        assert_eq!(
            Workload::parse("1_000_003").unwrap(),
            Workload::Elements(1_000_003)
        );
        assert_eq!(Workload::parse("GPT2").unwrap(), Workload::Gpt2Small);
        for bad in [
            "", "0", "-5", "1.5", "NaN", "3^4", "2^x", "2^99", "2^-1", "big",
        ] {
            assert!(Workload::parse(bad).is_err(), "{bad}");
        }
        for (text, reason) in [
            ("-5", "size `-5` must be a positive number of elements"),
            ("0", "size `0` must be a positive number of elements"),
            ("1.5", "size `1.5` is not a whole number of elements"),
            ("2^64", "size `2^64` is more elements than 64 bits count"),
        ] {
            let err = Workload::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
        assert_eq!(Workload::Elements(1 << 20).label(), "2^20");
        assert_eq!(Workload::Gpt2Small.lens().iter().sum::<u64>(), 124_439_808);
    }
}
