//! Exact decimal formatting of fixed-point integers (milliseconds, microseconds) for the renderers.

use core::fmt::{self, Write};

/// Writes `value / 10^scale` in plain decimal notation: never an exponent, the fraction's trailing
/// zeros trimmed but at least `min_decimals` digits kept after the point (no point when that is 0
/// and the value is whole). `scale` is at most 19.
///
/// `write_decimal(out, 1_763_700_000_123, 3, 1)` writes `1763700000.123`;
/// `write_decimal(out, 2_500, 6, 0)` writes `0.0025`; `write_decimal(out, 1_000_000, 6, 0)` writes `1`.
pub(crate) fn write_decimal(
    out: &mut impl Write,
    value: u64,
    scale: u32,
    min_decimals: usize,
) -> fmt::Result {
    debug_assert!(scale <= 19);
    let p = 10u64.pow(scale);
    write!(out, "{}", value / p)?;
    let mut frac = value % p;
    let mut digits = [b'0'; 19];
    let n = scale as usize;
    for d in digits[..n].iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    let mut keep = n;
    while keep > min_decimals.min(n) && digits[keep - 1] == b'0' {
        keep -= 1;
    }
    if keep > 0 {
        out.write_char('.')?;
        for &d in &digits[..keep] {
            out.write_char(d as char)?;
        }
    }
    // min_decimals beyond the scale: pad with zeros.
    if min_decimals > n {
        if n == 0 {
            out.write_char('.')?;
        }
        for _ in n..min_decimals {
            out.write_char('0')?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(v: u64, scale: u32, min: usize) -> String {
        let mut s = String::new();
        write_decimal(&mut s, v, scale, min).unwrap();
        s
    }

    #[test]
    fn trims_trailing_zeros_down_to_the_minimum() {
        assert_eq!(dec(1_763_700_000_123, 3, 1), "1763700000.123");
        assert_eq!(dec(1_763_690_000_000, 3, 1), "1763690000.0");
        assert_eq!(dec(1_763_690_000_100, 3, 1), "1763690000.1");
        assert_eq!(dec(1_763_690_000_000, 3, 0), "1763690000");
        assert_eq!(dec(400, 3, 1), "0.4");
        assert_eq!(dec(0, 3, 1), "0.0");
        assert_eq!(dec(0, 6, 0), "0");
        assert_eq!(dec(1_000, 6, 0), "0.001");
        assert_eq!(dec(2_500, 6, 0), "0.0025");
        assert_eq!(dec(10_000_000, 6, 0), "10");
        assert_eq!(dec(1, 6, 0), "0.000001");
        assert_eq!(dec(u64::MAX, 6, 0), "18446744073709.551615");
    }

    #[test]
    fn scale_zero_and_padding() {
        assert_eq!(dec(42, 0, 0), "42");
        assert_eq!(dec(42, 0, 1), "42.0");
        assert_eq!(dec(15, 1, 3), "1.500");
    }
}
